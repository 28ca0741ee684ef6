"""Human reference 1: nanoGPT's Shakespeare-char recipe for small machines, on rsilab's harness.

A full replacement for the task's train.py (same harness API, same sealed evaluator). The
recipe is Andrej Karpathy's, as published; nothing here was tuned on rsilab's validation
split. Sources (read for the facts, the code below is written for rsilab):

- https://github.com/karpathy/nanoGPT/blob/master/README.md, "I only have a macbook":
  `train.py config/train_shakespeare_char.py --device=cpu --compile=False --block_size=64
  --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
  --lr_decay_iters=2000 --dropout=0.0` ("gets us a loss of only 1.88").
- https://github.com/karpathy/nanoGPT/blob/master/config/train_shakespeare_char.py:
  learning_rate 1e-3, min_lr 1e-4, beta2 0.99, warmup_iters 100 (5% of the 2000 CPU
  iterations), lr_decay_iters = max_iters.
- https://github.com/karpathy/nanoGPT/blob/master/train.py: AdamW, weight_decay 0.1,
  beta1 0.9, grad_clip 1.0, bias False, linear warmup then cosine decay to min_lr.
- https://github.com/karpathy/nanoGPT/blob/master/model.py: pre-LayerNorm GPT-2 blocks,
  GELU MLP of 4x width, learned positions, tied input/output embeddings, N(0, 0.02) init
  with residual projections at 0.02/sqrt(2 * n_layer), weight decay on 2-D tensors only.

Adapted (see reference/README.md): byte vocabulary (256) instead of 65 characters; the
schedule runs over the fraction of the budget used (seconds, or FLOPs when the task sets
`budget_flops`) instead of over 2000 iterations; fp32 on CPU.
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from rsilab import harness

# ---- knobs: nanoGPT's README CPU command and config/train_shakespeare_char.py ----------
DEPTH = 4                # n_layer
HEADS = 4                # n_head
WIDTH = 128              # n_embd
SEQ_LEN = 64             # block_size
BATCH_SIZE = 12          # batch_size
DROPOUT = 0.0            # dropout ("ease down on regularization")
LR = 0.001               # learning_rate
MIN_LR = 0.0001          # min_lr: the cosine decay ends here
WARMUP_FRAC = 0.05       # warmup_iters 100 of max_iters 2000
WEIGHT_DECAY = 0.1       # weight_decay (train.py default), on 2-D tensors
BETA1 = 0.9              # beta1 (train.py default)
BETA2 = 0.99             # beta2 (the config: "bigger because number of tokens per iter is small")
GRAD_CLIP = 1.0          # grad_clip (train.py default)
INIT_STD = 0.02          # model.py's init
VOCAB = 256              # bytes (nanoGPT's shakespeare_char has 65 characters)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(WIDTH, bias=False)
        self.c_attn = nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.attn_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.ln_2 = nn.LayerNorm(WIDTH, bias=False)
        self.c_fc = nn.Linear(WIDTH, 4 * WIDTH, bias=False)
        self.mlp_proj = nn.Linear(4 * WIDTH, WIDTH, bias=False)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=DROPOUT if self.training else 0.0)
        x = x + self.drop(self.attn_proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(SEQ_LEN, WIDTH)
        self.drop = nn.Dropout(DROPOUT)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.ln_f = nn.LayerNorm(WIDTH, bias=False)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as in model.py
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # model.py: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)
                std = INIT_STD / math.sqrt(2 * DEPTH) if name.endswith("proj.weight") else INIT_STD
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def lr_at(progress):
    """nanoGPT's get_lr over the fraction of the budget used: linear warmup, cosine to MIN_LR."""
    if progress < WARMUP_FRAC:
        return LR * progress / WARMUP_FRAC
    ratio = min(1.0, (progress - WARMUP_FRAC) / (1 - WARMUP_FRAC))
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main():
    device = harness.setup()
    budget = harness.budget_seconds()
    budget_flops = harness.budget_flops()
    model = GPT().to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([dict(params=decay, weight_decay=WEIGHT_DECAY),
                                   dict(params=no_decay, weight_decay=0.0)],
                                  lr=LR, betas=(BETA1, BETA2))
    n_params = sum(p.numel() for p in model.parameters())
    # FLOPs per token: 6 per matmul weight (forward + backward) plus attention (PaLM, appendix B).
    matmul_weights = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "wpe" not in n)
    flops_per_token = 6 * matmul_weights + 12 * DEPTH * SEQ_LEN * WIDTH
    batches = harness.train_batches(BATCH_SIZE, SEQ_LEN, device)

    step, tokens, train_time, flops, loss_value = 0, 0, 0.0, 0.0, float("nan")
    cpu_time = 0.0  # this process's CPU time in the timed steps (a figure for benchmarks only)
    while (flops < budget_flops) if budget_flops else (train_time < budget):
        t0, c0 = time.time(), time.process_time()
        lr = lr_at(flops / budget_flops if budget_flops else train_time / budget)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step % 100 == 0:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training diverged at step {step}: loss {loss_value}")
            print(f"step {step:5d} | loss {loss_value:.4f} | lr {lr:.2e} | {train_time:.1f}s", flush=True)
        flops += flops_per_token * BATCH_SIZE * SEQ_LEN
        if step > 0:  # the first step pays one-off start-up costs, as in the task's train.py
            train_time += time.time() - t0
            cpu_time += time.process_time() - c0
            tokens += BATCH_SIZE * SEQ_LEN
        step += 1

    harness.save_model(model, torch.zeros(BATCH_SIZE, SEQ_LEN, dtype=torch.long, device=device))
    harness.print_summary({
        "training_seconds": train_time,
        "training_cpu_seconds": cpu_time,
        "total_seconds": harness.elapsed(),
        "total_tokens_M": tokens / 1e6,
        "num_steps": step,
        "num_params_M": n_params / 1e6,
        "tokens_per_second": tokens / max(train_time, 1e-9),
        "train_flops": flops,
        "final_train_loss": loss_value,
        "depth": DEPTH,
    })


if __name__ == "__main__":
    main()
