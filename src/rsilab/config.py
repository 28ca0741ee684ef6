"""Task specification. Owns: reading `rsilab.toml`, CLI overrides (`--set key=value`), validation.

A task is a folder with an `rsilab.toml`. Loading is strict: an unknown key, a wrong type
or a missing file is a one-line `ConfigError` that names the file and the key. Every key
can be overridden from the command line with a dotted path (`--set judge.alpha=0.1`,
`--set budget=30`).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rsilab.errors import ConfigError
from rsilab.harness import ENV_BUDGET_FLOPS
from rsilab.results import Metric

CONFIG_NAME = "rsilab.toml"


@dataclass(frozen=True)
class MetricSpec:
    name: str = "val_bpb"
    direction: Literal["min", "max"] = "min"
    # With evaluator = "in-process": a regular expression over the training log whose last
    # match is the metric (its first group, else the whole match), e.g. 'val loss ([0-9.]+)';
    # "": the metric is the `---` summary's key `name`.
    pattern: str = ""


@dataclass(frozen=True)
class JudgeSpec:
    alpha: float = 0.05  # one-sided significance level for keeping a candidate
    noise_runs: int = 3  # runs of the baseline under different seeds (the noise floor)
    max_runs: int = 4  # runs a candidate may get before the judge must decide
    min_runs: int = 2  # runs before a keep of a code change: one confirmation run at least
    # The same for a change of knob values only: a decisive first run is kept.
    knob_min_runs: int = 1
    recheck_every: int = 10  # re-measure the incumbent every N experiments (0: never)
    min_effect: float = 0.0  # smallest gain worth keeping, in metric units
    # Under budget_flops: a candidate whose runs used more than this many times the
    # incumbent's CPU time (the runner's count, from the kernel) is `invalid`: train.py counts
    # its own FLOPs, so a run that undercounts trains longer. 0: off.
    max_cpu_ratio: float = 3.0
    # The noise prior (rsilab.loop.evidence): a declared sd of one run's metric (0: none, then
    # the noise carried from earlier sessions of comparable settings, if any), worth
    # `noise_df` degrees of freedom in the pooled estimate (0: no prior at all).
    noise_sd: float = 0.0
    noise_df: int = 10  # degrees of freedom the prior is worth in the pooled estimate (0: no prior)
    prior_runs: int = 1  # runs of the baseline when there is a noise prior (else noise_runs)
    pair_seeds: bool = True  # a candidate's runs use the incumbent's seeds (a paired test)
    noise_window: int = 12  # noise groups from the last N judged experiments (0: all)
    undo: bool = True  # a re-check that finds the incumbent no better than its parent reverts it


@dataclass(frozen=True)
class EvalSpec:
    bytes: int = 131072  # validation bytes the sealed evaluator scores
    # Causality probes per kind (random bytes, validation text), at least 64: each cuts one
    # row at a secret position; every position of the context is cut once before any twice.
    probes: int = 256


@dataclass(frozen=True)
class TunerSpec:
    seed: int = 0
    max_knobs: int = 3  # knobs changed per proposal (1..max_knobs)
    exclude: list[str] = field(default_factory=list)  # knobs the tuner must not touch
    follow: int = 3  # with --proposer X+tuner: tuner experiments after each kept change of X


@dataclass(frozen=True)
class KnobSpec:
    """One declared knob (`[knobs.NAME]`): a setting of the user's code the tuner may move
    (rsilab.space). Without `file` it adds bounds or a condition to the auto-detected
    UPPER_CASE knob NAME of the editable `.py` files."""

    # Where the value lives: an editable .py, .toml, .yaml/.yml or .json file ("": NAME is an
    # auto-detected UPPER_CASE knob).
    file: str = ""
    # The Python variable (`lr`, `Config.lr` in a top-level class) or the dotted key of the
    # config file (`optim.lr`); "": the knob's name.
    key: str = ""
    # A flag of the train command (`--lr`): the value read from `file` is passed to every run
    # as `--lr VALUE` after the train command; "": none.
    flag: str = ""
    range: list[float] = field(
        default_factory=list
    )  # [low, high] of a number ([]: around the value)
    log: bool = False  # search the range on a log scale (both ends > 0)
    choices: list[Any] = field(default_factory=list)  # a closed set of values ([]: none)
    # Conditions: the knob only matters when each named knob has that value (or one of a
    # list of values): `when = { optimizer = "muon" }`. The tuner moves it only then.
    when: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LLMSpec:
    """A chat model as the researcher. Keys come from the environment, never from files."""

    api: Literal["openai", "anthropic"] = "openai"  # wire format
    base_url: str = ""  # "" -> $OPENAI_BASE_URL / $ANTHROPIC_BASE_URL, else the vendor's URL
    model: str = ""  # "" -> $RSILAB_LLM_MODEL, else a default per api
    # Name of the variable holding the key ("" -> OPENAI_API_KEY / ANTHROPIC_API_KEY).
    key_env: str = ""
    temperature: float = 0.7
    max_tokens: int = 4096  # of one answer
    timeout: float = 180.0  # seconds per HTTP request
    context_tokens: int = 24000  # most tokens one prompt may use (a cost cap); the window lowers it
    # The model's context window, prompt and answer together; 0: ask the server (llama.cpp
    # /props, vLLM /v1/models, ollama /api/show), else learn it from a context-length error.
    window_tokens: int = 0
    # How the answer is asked for. "auto": a JSON schema on local servers (the one format
    # small models keep), free text on the vendors' own hosts; "json_schema" / "json_object"
    # (llama-cpp-python's form) / "tool" (Anthropic tool use); "off": free text only.
    structured: Literal["auto", "off", "json_schema", "json_object", "tool"] = "auto"
    # What to ask for: "edit" (SEARCH/REPLACE edits of the files), "compact" (one knob and
    # its new value, from a table of the knobs; about 1k tokens), "auto" (compact when the
    # window is under 6k tokens or the edit prompt cannot fit it).
    mode: Literal["auto", "edit", "compact"] = "auto"
    # Where the system prompt goes: "system", "user" (opening the first user turn, for chat
    # templates that drop the system role, like Gemma's), "auto" (user when the server's
    # template has no system role or the model is a Gemma).
    system_prompt: Literal["auto", "system", "user"] = "auto"
    price_in: float = 0.0  # USD per million input tokens (for cost; 0: unknown)
    price_out: float = 0.0  # USD per million output tokens
    repair_rounds: int = 2  # re-asks after a malformed or non-applying answer
    fix_attempts: int = 1  # follow-up experiments that try to fix a crash


@dataclass(frozen=True)
class AgentSpec:
    """A coding-agent CLI as the researcher, run once per experiment in its worktree."""

    cli: Literal["claude", "codex", "command"] = "claude"
    # For cli = "command": the argv; {prompt_file}, {description_file} and {workdir} are substituted.
    command: list[str] = field(default_factory=list)
    model: str = ""  # passed to the CLI when set
    timeout: float = 900.0  # seconds per proposal


# Settings that make results comparable: a workspace refuses to mix runs made under other
# values, `rsilab score --compare` skips runs made under others (all but the research
# `seed`, which differs legitimately between workspaces), and `rsilab meta` records them
# for each session like `rsilab run` does. The one list: see TaskSpec.comparable.
COMPARABLE_KEYS = (
    "budget",
    "budget_flops",
    "evaluator",
    "data",
    "seed",
    "threads",
    "eval.bytes",
    "metric.name",
    "metric.direction",
    "allow_generated_data",
)


@dataclass(frozen=True)
class TaskSpec:
    """A validated `rsilab.toml` plus the folder it was read from."""

    name: str
    editable: list[str]
    root: Path = Path(".")
    description: str = ""
    frozen: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=lambda: ["python", "train.py"])
    # "sealed": rsilab's torch.export evaluator; "in-process": the metric is read from
    # train.py's own summary (autoresearch's mode, marked in the ledger); "script:PATH":
    # a frozen script of the task that reads the artifact and writes the metrics file.
    evaluator: str = "sealed"
    data: str = "shakespeare"  # "shakespeare", a local path, "hf:NAME[:split]", or "none"
    program: str = "program.md"
    budget: float = 60.0  # training seconds
    # Optional budget in estimated training FLOPs (0: off). When set, train.py stops on it
    # (harness.budget_flops) and `budget` stays the wall-clock cap, so results compare across machines.
    budget_flops: float = 0.0
    overhead: float = 30.0  # seconds on top of the budget for start-up and saving
    # Seconds after the budget by which train.py must have handed over its model (start-up and
    # saving): the runner reads when the artifact folder last changed (the kernel's ctime,
    # which no run can set back), and a later hand-over is `invalid`, not a longer training.
    # Not applied under budget_flops (see judge.max_cpu_ratio). 0: off.
    handover_slack: float = 20.0
    eval_timeout: float = 300.0
    # "Wrap up now": this signal goes to the train command when the budget is up, so a loop
    # that catches it can evaluate, print its metric and save before the kill at budget +
    # overhead (SIGINT: Python's KeyboardInterrupt). "": none (the kill only).
    wrap_up_signal: Literal["", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2"] = ""
    threads: int = 1
    # Host memory (RSS) a run may use; past it the run is killed (oom). 0: no cap.
    memory_gb: float = 0.0
    # Peak GPU memory a kept run may use: what train.py reports as `peak_memory_gb:` (the
    # bundled task: torch.cuda.max_memory_allocated). A run over it is discarded. 0: no cap.
    gpu_memory_gb: float = 0.0
    # Isolation of runs (rsilab.run.sandbox): "auto" (the best that works here), "require"
    # (bubblewrap or refuse to run), or a level: "bwrap", "netns", "none".
    sandbox: Literal["auto", "require", "bwrap", "netns", "none"] = "auto"
    max_procs: int = 512  # processes + threads a run may have (a fork bomb ends here); 0: no limit
    seed: int = 0  # base of the seed sequence for runs
    metric: MetricSpec = field(default_factory=MetricSpec)
    judge: JudgeSpec = field(default_factory=JudgeSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    tuner: TunerSpec = field(default_factory=TunerSpec)
    llm: LLMSpec = field(default_factory=LLMSpec)
    agent: AgentSpec = field(default_factory=AgentSpec)
    proposer: str = ""  # default proposer for `rsilab run` ("" -> llm when configured, else tuner)
    constraints: dict[str, float] = field(default_factory=dict)  # summary key -> max value
    # Whether training may consume model-generated data (rsilab.provenance); the runner
    # refuses generated training data otherwise, and runs on it are flagged in the ledger.
    allow_generated_data: bool = False
    env: dict[str, str] = field(default_factory=dict)  # extra environment for runs
    # The declared search space: knob name -> where it lives and how to search it (KnobSpec).
    knobs: dict[str, KnobSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The FLOPs budget reaches train.py through the run environment, which the runner
        # builds from `env`; derived here so a `dataclasses.replace` keeps the two in step.
        env = {k: v for k, v in self.env.items() if k != ENV_BUDGET_FLOPS}
        if self.budget_flops > 0:
            env[ENV_BUDGET_FLOPS] = repr(float(self.budget_flops))
        object.__setattr__(self, "env", env)

    @property
    def metric_obj(self) -> Metric:
        return Metric(self.metric.name, self.metric.direction)

    @property
    def sealed(self) -> bool:
        return self.evaluator != "in-process"

    def editable_files(self, root: Path | None = None) -> list[str]:
        """Existing files under `root` matching the editable globs (sorted, relative)."""
        return _expand(root or self.root, self.editable)

    def frozen_files(self, root: Path | None = None) -> list[str]:
        return _expand(root or self.root, self.frozen)

    def is_editable(self, rel: str) -> bool:
        return any(_glob_match(rel, g) for g in self.editable)

    def comparable(self, preset: str) -> dict[str, Any]:
        """The settings that give this task's metric values their meaning (COMPARABLE_KEYS and
        the knob preset): results made under other values must not be compared or mixed."""
        out: dict[str, Any] = {"preset": preset}
        for key in COMPARABLE_KEYS:
            obj: Any = self
            for part in key.split("."):
                obj = getattr(obj, part)
            out[key] = obj
        return out

    def limits(self) -> list[str]:
        """What one run may use, one line each, for the researcher's prompt: a proposal
        that plans within them does not spend a run on a discard it could have foreseen."""
        if self.budget_flops:
            lines = [
                f"training budget: {self.budget_flops:.3g} estimated FLOPs per run "
                f"(`harness.budget_flops()`), at most {self.budget:g} s of wall clock"
            ]
        else:
            lines = [
                f"training budget: {self.budget:g} s of wall clock per run (`harness.budget_seconds()`)"
            ]
        if self.memory_gb:
            lines.append(
                f"host memory: {self.memory_gb:g} GB per run; past it the run is killed (oom)"
            )
        if self.gpu_memory_gb:
            lines.append(
                f"GPU memory: {self.gpu_memory_gb:g} GB peak, as train.py reports it "
                "(`peak_memory_gb` in its summary); a run over it is discarded"
            )
        lines += [
            f"{key} <= {limit:g} (a key of train.py's summary); a run over it is discarded"
            for key, limit in self.constraints.items()
        ]
        return lines


def _glob_match(rel: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(rel, pattern)


def _expand(root: Path, patterns: list[str]) -> list[str]:
    out: set[str] = set()
    for pat in patterns:
        for p in glob.glob(pat, root_dir=root, recursive=True):
            if (root / p).is_file():
                out.add(Path(p).as_posix())
    return sorted(out)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set budget=30")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):  # not TOML (or absurdly nested): a string
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Return a copy of `data` with dotted keys set (`judge.alpha` -> data['judge']['alpha'])."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in overrides:
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a table")
        node[parts[-1]] = value
    return out


def load_task(
    root: Path,
    overrides: list[tuple[str, Any]] | None = None,
    *,
    text: str | None = None,
    files: list[str] | None = None,
    where: str | None = None,
) -> TaskSpec:
    """Load and validate `<root>/rsilab.toml`. Raises ConfigError with a one-line message.

    A workspace passes the file as committed (`text`, named `where` in errors) and the files
    of that commit (`files`, relative paths), so the task is the commit's, whatever the
    folder holds now; globs are then matched against `files` (fnmatch, like `is_editable`).
    """
    path = root / CONFIG_NAME
    if text is None:
        if not path.is_file():
            raise ConfigError(f"{path}: not found (a task folder needs an {CONFIG_NAME})")
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
    shown = where or str(path)
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise ConfigError(f"{shown}: invalid TOML: {str(e) or type(e).__name__}") from None
    data = apply_overrides(data, overrides or [])
    spec = _build(TaskSpec, data, shown, "", extra={"root": root.resolve()})
    _validate(spec, shown, files)
    return spec


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return {list: "a list", dict: "a table"}[origin]
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"{where}: key {key!r} must be {_type_name(tp)}, got {value!r}")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, where, key + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str) and item is str and key == "train":
            import shlex

            try:
                return shlex.split(value)
            except ValueError as e:  # an unclosed quote
                raise ConfigError(f"{where}: key 'train': {e} in {value!r}") from None
        if not isinstance(value, list):
            raise bad()
        return [_coerce(item, v, where, key) for v in value]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad()
        return {str(k): _coerce(vt, v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        if not math.isfinite(value):  # TOML reads nan and inf; no rsilab setting means them
            raise ConfigError(f"{where}: key {key!r} must be a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if tp is Path:
        return Path(value)
    if isinstance(tp, types.UnionType) or tp is Any:
        return value
    raise bad()


def _build(
    cls: Any, data: dict[str, Any], where: str, prefix: str, extra: dict[str, Any] | None = None
) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(extra or {})
    for key in data:
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{where}: unknown key {prefix + key!r} (known: {known})")
    kwargs: dict[str, Any] = dict(extra or {})
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where, prefix + f.name)
        elif (
            f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in kwargs
        ):
            raise ConfigError(f"{where}: missing required key {prefix + f.name!r}")
    return cls(**kwargs)


def _validate(spec: TaskSpec, where: str, files: list[str] | None = None) -> None:
    def matching(patterns: list[str]) -> list[str]:
        if files is None:
            return _expand(spec.root, patterns)
        return sorted(f for f in files if any(_glob_match(f, p) for p in patterns))

    if not spec.editable:
        raise ConfigError(f"{where}: key 'editable' must list at least one file or glob")
    for key, patterns in (("editable", spec.editable), ("frozen", spec.frozen)):
        for pat in patterns:
            if not pat or Path(pat).is_absolute() or ".." in Path(pat).parts:
                raise ConfigError(
                    f"{where}: key {key!r}: {pat!r} must be a path inside the task folder"
                )
    for pat in spec.editable:
        if not matching([pat]):
            raise ConfigError(f"{where}: key 'editable': no file matches {pat!r} in {spec.root}")
    for pat in spec.frozen:
        if not matching([pat]):
            raise ConfigError(f"{where}: key 'frozen': no file matches {pat!r} in {spec.root}")
    overlap = set(matching(spec.editable)) & set(matching(spec.frozen))
    if overlap:
        raise ConfigError(f"{where}: files both editable and frozen: {', '.join(sorted(overlap))}")
    if spec.budget_flops < 0:
        raise ConfigError(
            f"{where}: key 'budget_flops' must be >= 0 (0: off), got {spec.budget_flops}"
        )
    if spec.budget <= 0:
        raise ConfigError(f"{where}: key 'budget' must be > 0 seconds, got {spec.budget}")
    if spec.max_procs < 0:
        raise ConfigError(
            f"{where}: key 'max_procs' must be >= 0 (0: no limit), got {spec.max_procs}"
        )
    if spec.threads < 1:
        raise ConfigError(f"{where}: key 'threads' must be >= 1, got {spec.threads}")
    if not spec.train:
        raise ConfigError(f"{where}: key 'train' must be a command")
    ev = spec.evaluator
    if ev not in ("sealed", "in-process") and not ev.startswith("script:"):
        raise ConfigError(
            f"{where}: key 'evaluator' must be 'sealed', 'in-process' or 'script:PATH', got {ev!r}"
        )
    if ev.startswith("script:"):
        script = ev.removeprefix("script:")
        if script not in (files if files is not None else _expand(spec.root, [script])):
            raise ConfigError(
                f"{where}: key 'evaluator': script {script!r} not found in {spec.root}"
            )
        if script not in matching(spec.frozen):
            raise ConfigError(
                f"{where}: key 'evaluator': script {script!r} must be listed in 'frozen'"
            )
    j = spec.judge
    if not 0 < j.alpha < 1:
        raise ConfigError(f"{where}: key 'judge.alpha' must be in (0, 1), got {j.alpha}")
    if j.noise_runs < 1 or j.max_runs < 1 or j.prior_runs < 1:
        raise ConfigError(
            f"{where}: keys 'judge.noise_runs', 'judge.prior_runs' and 'judge.max_runs' must be >= 1"
        )
    for key, runs in (("min_runs", j.min_runs), ("knob_min_runs", j.knob_min_runs)):
        if runs < 1:  # above max_runs it is clamped: max_runs = 1 is the single-run rule
            raise ConfigError(f"{where}: key 'judge.{key}' must be >= 1, got {runs}")
    if spec.tuner.max_knobs < 1:
        raise ConfigError(f"{where}: key 'tuner.max_knobs' must be >= 1")
    # Durations, sizes and counts: a negative (or zero) one is a typo, never a setting.
    llm, agent = spec.llm, spec.agent
    for key, value in (
        ("overhead", spec.overhead),
        ("handover_slack", spec.handover_slack),
        ("judge.max_cpu_ratio", j.max_cpu_ratio),
        ("memory_gb", spec.memory_gb),
        ("gpu_memory_gb", spec.gpu_memory_gb),
        ("judge.recheck_every", j.recheck_every),
        ("judge.min_effect", j.min_effect),
        ("judge.noise_sd", j.noise_sd),
        ("judge.noise_df", j.noise_df),
        ("judge.noise_window", j.noise_window),
        ("judge.prior_runs", j.prior_runs),
        ("eval.probes", spec.eval.probes),
        ("tuner.follow", spec.tuner.follow),
        ("llm.temperature", llm.temperature),
        ("llm.price_in", llm.price_in),
        ("llm.price_out", llm.price_out),
        ("llm.repair_rounds", llm.repair_rounds),
        ("llm.fix_attempts", llm.fix_attempts),
        ("llm.window_tokens", llm.window_tokens),
    ):
        if value < 0:
            raise ConfigError(f"{where}: key {key!r} must be >= 0, got {value}")
    for key, value in (
        ("eval_timeout", spec.eval_timeout),
        ("eval.bytes", spec.eval.bytes),
        ("llm.max_tokens", llm.max_tokens),
        ("llm.timeout", llm.timeout),
        ("llm.context_tokens", llm.context_tokens),
        ("agent.timeout", agent.timeout),
    ):
        if value <= 0:
            raise ConfigError(f"{where}: key {key!r} must be > 0, got {value}")
    for name, knob in spec.knobs.items():
        _validate_knob(spec, where, name, knob, matching)
    if spec.metric.pattern:
        if ev != "in-process":
            raise ConfigError(
                f"{where}: key 'metric.pattern' reads the training log: it needs "
                f"evaluator = 'in-process' (unsealed), got {ev!r}"
            )
        try:
            re.compile(spec.metric.pattern)
        except re.error as e:
            raise ConfigError(
                f"{where}: key 'metric.pattern': not a regular expression ({e}): "
                f"{spec.metric.pattern!r}"
            ) from None


_KNOB_FILES = (".py", ".toml", ".yaml", ".yml", ".json")


def _validate_knob(spec: TaskSpec, where: str, name: str, knob: KnobSpec, matching: Any) -> None:
    """A declared knob must name an editable file of a known format, a sane range and
    conditions on knobs that exist (declared, or UPPER_CASE names: auto-detected)."""
    at = f"{where}: key 'knobs.{name}'"
    if knob.file:
        if not knob.file.endswith(_KNOB_FILES):
            raise ConfigError(f"{at}: file {knob.file!r} must be .py, .toml, .yaml, .yml or .json")
        if not spec.is_editable(knob.file) or not matching([knob.file]):
            raise ConfigError(
                f"{at}: file {knob.file!r} must be an existing file listed in 'editable'"
            )
    elif knob.key or knob.flag:
        raise ConfigError(f"{at}: 'key' and 'flag' need 'file' (where the value lives)")
    if knob.flag and not knob.flag.startswith("-"):
        raise ConfigError(f"{at}: flag {knob.flag!r} must start with '-', e.g. '--lr'")
    if knob.range:
        if len(knob.range) != 2 or not knob.range[0] < knob.range[1]:
            raise ConfigError(f"{at}: range must be [low, high] with low < high, got {knob.range}")
        if knob.log and knob.range[0] <= 0:
            raise ConfigError(f"{at}: a log range must be above 0, got {knob.range}")
    if knob.range and knob.choices:
        raise ConfigError(f"{at}: give 'range' or 'choices', not both")
    for other in knob.when:
        if other == name or (other not in spec.knobs and not other.isupper()):
            raise ConfigError(
                f"{at}: 'when' names {other!r}, which is not another knob (declare it in [knobs])"
            )


def resolve_task_dir(name_or_path: str | None) -> Path:
    """A bundled task name (`gpt`, `toy`) or a folder with an rsilab.toml.

    With None: the current folder when it holds an rsilab.toml, else the bundled `gpt`.
    """
    from rsilab.paths import bundled_tasks_dir

    if name_or_path is None:
        return Path.cwd() if (Path.cwd() / CONFIG_NAME).is_file() else bundled_tasks_dir() / "gpt"
    bundled = bundled_tasks_dir() / name_or_path
    if "/" not in name_or_path and _has_config(bundled):
        return bundled
    path = Path(name_or_path)
    if _has_config(path):
        return path.resolve()
    names = sorted(p.name for p in bundled_tasks_dir().iterdir() if (p / CONFIG_NAME).is_file())
    raise ConfigError(
        f"task {name_or_path!r}: not a bundled task ({', '.join(names)}) nor a folder with an {CONFIG_NAME}"
    )


def _has_config(folder: Path) -> bool:
    """Whether `folder` holds an rsilab.toml; False also for a name the OS refuses (too long)."""
    try:
        return (folder / CONFIG_NAME).is_file()
    except (OSError, ValueError):
        return False
