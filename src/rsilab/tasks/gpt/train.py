"""A small byte-level GPT, trained for a fixed wall-clock budget. THE file the agent edits.

Everything here is fair game: the knobs below, the model, the optimizer, the schedule.
The frozen parts live in `rsilab.harness` (budget, seed, data, save_model) and in the
sealed evaluator, which scores the exported model on held-out text this script never sees.
"""

import ctypes
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsilab import harness

# ---- knobs (cpu preset: a 60 s budget on one CPU thread) -----------------------------
DEPTH = 2                # transformer blocks
WIDTH = 128              # model width (embedding size)
HEADS = 4                # attention heads (head size: WIDTH // HEADS, rounded down to even)
MLP_RATIO = 4            # MLP hidden size / WIDTH
SEQ_LEN = 128            # context length in bytes
BATCH_SIZE = 16          # sequences per optimizer step
LR = 0.001               # peak learning rate of AdamW (embeddings, head, norms; all params under adamw)
MATRIX_LR = 0.02         # peak learning rate of Muon for hidden matrices (when OPTIMIZER is muon)
WARMUP_FRAC = 0.05       # fraction of the budget spent warming the learning rate up
WARMDOWN_FRAC = 0.2      # fraction of the budget at the end spent decaying it to zero
WEIGHT_DECAY = 0.0       # AdamW weight decay on matrices
BETA1 = 0.9              # AdamW beta1
BETA2 = 0.95             # AdamW beta2
GRAD_CLIP = 1.0          # max gradient norm (0: off)
ACTIVATION = "gelu"      # one of: gelu, relu, relu2, swiglu
NORM = "layernorm"       # one of: layernorm, rmsnorm
POS_ENCODING = "learned" # one of: learned, rope
TIE_WEIGHTS = True       # share the token embedding with the output head
DROPOUT = 0.0            # dropout probability in blocks
OPTIMIZER = "adamw"      # one of: adamw, muon
INIT_STD = 0.02          # std of the normal init of weights

# ---- gpu preset: autoresearch scale, 5 minutes on one GPU ----------------------------
PRESET = harness.preset()
if PRESET == "gpu":
    DEPTH = 8
    WIDTH = 512
    HEADS = 8
    SEQ_LEN = 1024
    BATCH_SIZE = 64
    LR = 0.0006


class Norm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if NORM == "layernorm" else nn.RMSNorm(dim)

    def forward(self, x):
        return self.norm(x)


def rope_tables(seq_len, head_dim):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    t = x.shape[-2]
    cos, sin = cos[:t], sin[:t]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        # An even head size (rope rotates pairs); HEADS need not divide WIDTH.
        self.head_dim = max(2, WIDTH // HEADS // 2 * 2)
        inner = HEADS * self.head_dim
        self.qkv = nn.Linear(WIDTH, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, WIDTH, bias=False)
        if POS_ENCODING == "rope":
            cos, sin = rope_tables(SEQ_LEN, self.head_dim)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x):
        b, t, _ = x.shape
        # split, then (B, T, H, D) -> (B, H, T, D): about 2% faster a step on CPU than one
        # permute of the fused projection (the same numbers either way).
        q, k, v = self.qkv(x).split(HEADS * self.head_dim, dim=2)
        q, k, v = (z.view(b, t, HEADS, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if POS_ENCODING == "rope":
            q, k = apply_rope(q, self.cos, self.sin), apply_rope(k, self.cos, self.sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=DROPOUT if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, HEADS * self.head_dim))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        hidden = MLP_RATIO * WIDTH
        if ACTIVATION == "swiglu":
            hidden = int(2 * hidden / 3)  # same parameter count as the plain MLP
            self.gate = nn.Linear(WIDTH, hidden, bias=False)
        self.up = nn.Linear(WIDTH, hidden, bias=False)
        self.down = nn.Linear(hidden, WIDTH, bias=False)

    def forward(self, x):
        h = self.up(x)
        if ACTIVATION == "gelu":
            h = F.gelu(h)
        elif ACTIVATION == "relu":
            h = F.relu(h)
        elif ACTIVATION == "relu2":
            h = F.relu(h).square()
        else:
            h = F.silu(self.gate(x)) * h
        return self.down(h)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attn = Norm(WIDTH), Attention()
        self.norm2, self.mlp = Norm(WIDTH), MLP()
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, WIDTH)
        if POS_ENCODING == "learned":
            self.pos = nn.Embedding(SEQ_LEN, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = Norm(WIDTH)
        self.head = nn.Linear(WIDTH, 256, bias=False)
        if TIE_WEIGHTS:
            self.head.weight = self.embed.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = INIT_STD / math.sqrt(2 * DEPTH) if name.endswith(("proj.weight", "down.weight")) else INIT_STD
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.embed(idx)
        if POS_ENCODING == "learned":
            x = x + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def newton_schulz(g, steps=5):
    """Approximately orthogonalise g (Muon's update), quintic iteration, in bf16 on GPU."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    x = x / (x.norm() + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz, for 2-D hidden matrices."""

    def __init__(self, params, lr, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                update = newton_schulz(p.grad.add(buf, alpha=group["momentum"]))
                p.add_(update, alpha=-group["lr"] * max(1.0, p.shape[0] / p.shape[1]) ** 0.5)


def make_optimizers(model):
    # One fused kernel per parameter group instead of a dozen small ops per tensor (CPU, CUDA).
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    matrices = [p for n, p in model.named_parameters() if p.dim() == 2 and "blocks." in n]
    others = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "blocks." in n)]
    betas = (BETA1, BETA2)
    if OPTIMIZER == "muon":
        return [Muon(matrices, lr=MATRIX_LR),
                torch.optim.AdamW(others, lr=LR, betas=betas, weight_decay=0.0, fused=fused)]
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=rest, weight_decay=0.0)]
    return [torch.optim.AdamW(groups, lr=LR, betas=betas, fused=fused)]


def lr_scale(progress):
    """Learning-rate multiplier at `progress` (fraction of the time budget used)."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return 1.0


def keep_freed_memory():
    """Stop glibc from handing freed activations back to the OS after every step and faulting
    them in again on the next (about 2,000 page faults a step on the cpu preset, 4% of its
    time). A no-op where there is no mallopt (macOS)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: buffers up to 32 MB come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of freed heap
    except (AttributeError, OSError):
        pass


def main():
    device = harness.setup()
    keep_freed_memory()
    budget = harness.budget_seconds()
    budget_flops = harness.budget_flops()  # when set, the budget is estimated FLOPs, not seconds
    model = GPT().to(device)
    optimizers = make_optimizers(model)
    for opt in optimizers:
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    n_params = sum(p.numel() for p in model.parameters())
    # FLOPs per token: 6 per matmul weight (forward + backward) plus attention (PaLM, appendix B).
    matmul_weights = sum(p.numel() for n, p in model.named_parameters()
                         if p.dim() == 2 and not n.startswith(("embed", "pos")))
    if TIE_WEIGHTS:
        matmul_weights += 256 * WIDTH  # the head reuses the embedding matrix
    flops_per_token = 6 * matmul_weights + 12 * DEPTH * SEQ_LEN * WIDTH
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    batches = harness.train_batches(BATCH_SIZE, SEQ_LEN, device)

    step, tokens, train_time, loss_value, flops = 0, 0, 0.0, float("nan"), 0.0
    cpu_time = 0.0  # this process's CPU time in the timed steps: the work, not the waits for a core
    while (flops < budget_flops) if budget_flops else (train_time < budget):
        t0, c0 = time.time(), time.process_time()
        scale = lr_scale(flops / budget_flops if budget_flops else train_time / budget)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        x, y = next(batches)
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits.float().reshape(-1, 256), y.reshape(-1))
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        # No sync per step: on a GPU the next batch is prepared while this step runs. The
        # clock lags the device by the few steps queued; the item() below and the sync
        # after the loop catch up.
        if step % 100 == 0:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training diverged at step {step}: loss {loss_value}")
            print(f"step {step:5d} | loss {loss_value:.4f} | lr x{scale:.2f} | {train_time:.1f}s", flush=True)
        flops += flops_per_token * BATCH_SIZE * SEQ_LEN
        if step > 0:  # the first step pays one-off start-up costs; autoresearch excludes it too
            train_time += time.time() - t0
            cpu_time += time.process_time() - c0
            tokens += BATCH_SIZE * SEQ_LEN
        step += 1
    if device.type == "cuda":
        t0 = time.time()
        torch.cuda.synchronize()  # the steps still queued on the device
        train_time += time.time() - t0

    harness.save_model(model, torch.zeros(BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=device))
    tokens_per_second = tokens / max(train_time, 1e-9)
    peak_flops = harness.peak_flops(device)
    peak_memory_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    harness.print_summary({
        "training_seconds": train_time,
        "training_cpu_seconds": cpu_time,
        "total_seconds": harness.elapsed(),
        "peak_memory_gb": peak_memory_gb,
        "total_tokens_M": tokens / 1e6,
        "num_steps": step,
        "num_params_M": n_params / 1e6,
        "tokens_per_second": tokens_per_second,
        "mfu_percent": 100 * flops_per_token * tokens_per_second / peak_flops,
        "train_flops": flops,
        "final_train_loss": loss_value,
        "depth": DEPTH,
        "preset": PRESET,
    })


if __name__ == "__main__":
    main()
