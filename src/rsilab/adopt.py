"""Adopting a repo. Owns: proposing an `rsilab.toml` and a `program.md` for an existing git
repository that knows nothing of rsilab (`rsilab init DIR`, `rsilab init --adopt`).

What it detects, from the files alone (nothing is run):

- the train command: `train.py` at the top, else the one `*train*.py` with a `__main__`
  guard or top-level code, else `main.py`;
- the metric: a line the training code prints, like `print(f"val loss {loss:.4f}")` or
  `log.info("val_acc %.3f", acc)`: its words before the number become `metric.pattern`
  (`'val loss ([-+0-9.eE]+)'`, the last match counts) and the metric's name (`val_loss`);
  loss, error, perplexity and bits are minimised, accuracy and scores maximised;
- the editable files: the train script, config files (`config*.py`, `*config*.yaml` ...)
  and model files; frozen: the new `rsilab.toml` and `program.md`, and evaluation or data
  code (`eval*.py`, `data*.py`, `prepare*.py`);
- the search space: literal numbers and booleans at the top level of an editable config
  file (any case, also in YAML, TOML and JSON), declared under `[knobs]`; names that are
  not settings to tune (seeds, paths, devices, logging intervals) are left out;
- the seeding: a fixed `manual_seed(...)` / `seed(...)` that never reads `RSILAB_SEED`
  gets a comment and a printed note (the judge would see no noise), and a
  `KeyboardInterrupt` handler makes `wrap_up_signal = "SIGINT"`.

Whatever it cannot tell, it refuses in one line that names the option to give (`--train`,
`--metric` with `--pattern`). The written file is commented key by key for the user to
review. The evaluator is `in-process` (the metric is the script's own line, marked
unsealed); a frozen `script:` evaluator is the way to a sealed one (docs/own-code.md).
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsilab.config import CONFIG_NAME
from rsilab.errors import ConfigError

PROGRAM_NAME = "program.md"
_METRIC_WORDS = r"(?:val(?:id(?:ation)?)?|test|eval|dev)[ _-]?(?:loss|acc(?:uracy)?|bpb|ppl|perplexity|error|err|f1|auc|score|mse|mae|rmse)"
# A literal with a metric word right before a placeholder: f-string `{`, %-format, `.format`.
_METRIC_LITERAL = re.compile(
    rf"(?P<words>{_METRIC_WORDS})(?P<sep>\s*[:=]?\s*)(?:\{{|%)", re.IGNORECASE
)
_MAXIMISED = ("acc", "f1", "auc", "score")
_SKIP_DIRS = {".git", ".rsilab", "__pycache__", ".venv", "venv", "node_modules", ".tox", "build"}
_CONFIG_NAME = re.compile(r"(^|[_\-/])(config|configs|conf|hparams|hyperparams|settings)", re.I)
_MODEL_NAME = re.compile(r"(^|[_\-/])model", re.I)
_FROZEN_NAME = re.compile(
    r"(^|[_\-/])(eval|evaluate|evaluation|data|dataset|prepare|metrics?)", re.I
)
_CONFIG_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".json")
# Not settings to tune: a name with one of these words holds where or how a run is made or
# measured, not how the model learns.
_NOT_KNOBS = {
    "seed",
    "device",
    "path",
    "dir",
    "file",
    "name",
    "url",
    "log",
    "logging",
    "wandb",
    "verbose",
    "save",
    "out",
    "output",
    "ckpt",
    "checkpoint",
    "compile",
    "dtype",
    "backend",
    "rank",
    "world",
    "port",
    "host",
    "interval",
    "every",
    "workers",
    "eval",
    "debug",
    "resume",
}
MAX_KNOBS = 16


@dataclass
class Proposal:
    """What `detect` found: enough to write rsilab.toml and program.md."""

    train: list[str]
    script: str
    metric: str
    pattern: str
    direction: str
    editable: list[str]
    frozen: list[str]
    knobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> [knobs.NAME] keys
    seeds_itself: str = ""  # the line that pins a seed, "" when none was found
    wrap_up: str = ""  # a wrap_up_signal the script already handles, else ""
    notes: list[str] = field(default_factory=list)  # what the user should know, one line each


def _files(root: Path, limit: int = 2000) -> list[str]:
    """Files of the repo, relative and sorted, without VCS, virtualenv and cache folders."""
    out: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts) or not path.is_file():
            continue
        out.append(rel.as_posix())
        if len(out) >= limit:
            break
    return out


def _read(root: Path, rel: str) -> str:
    try:
        return (root / rel).read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _runs_as_script(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "__main__" in ast.unparse(stmt.test):
            return True
        if isinstance(stmt, ast.Expr | ast.For | ast.While | ast.With):
            return True
    return False


def find_script(root: Path, files: list[str]) -> str | None:
    """The training script: train.py at the top, else one `*train*.py` that runs as a script
    (the shallowest), else main.py; None when none or several equally likely."""
    if "train.py" in files:
        return "train.py"
    candidates = [
        f
        for f in files
        if f.endswith(".py")
        and "train" in Path(f).name.lower()
        and not Path(f).name.startswith("test_")
        and _runs_as_script(_read(root, f))
    ]
    if candidates:
        depth = min(f.count("/") for f in candidates)
        shallow = [f for f in candidates if f.count("/") == depth]
        return shallow[0] if len(shallow) == 1 else None
    return "main.py" if "main.py" in files else None


def find_metric(sources: dict[str, str]) -> tuple[str, str, str] | None:
    """(name, pattern, direction) of the metric line the code prints, or None. The train
    script's own lines come first (`sources` in priority order); within it the last such
    literal (the final evaluation is usually printed last)."""
    for text in sources.values():
        found = list(_METRIC_LITERAL.finditer(text))
        if not found:
            continue
        m = found[-1]
        words, sep = m.group("words"), m.group("sep")
        name = re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")
        pattern = re.escape(words + sep).replace("\\ ", " ") + r"([-+0-9.eE]+)"
        direction = "max" if any(w in words.lower() for w in _MAXIMISED) else "min"
        return name, pattern, direction
    return None


def _py_knobs(source: str) -> dict[str, Any]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, node = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, node = stmt.target, stmt.value
        else:
            continue
        if not isinstance(target, ast.Name) or target.id.isupper():
            continue  # UPPER_CASE knobs are found without a declaration
        try:
            value = ast.literal_eval(node)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if node.end_lineno == node.lineno:
            out[target.id] = value
    return out


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif prefix:
        out[prefix[:-1]] = data
    return out


def _config_knobs(rel: str, text: str) -> dict[str, Any]:
    try:
        if rel.endswith(".py"):
            return _py_knobs(text)
        if rel.endswith(".toml"):
            return _flat(tomllib.loads(text))
        if rel.endswith(".json"):
            return _flat(json.loads(text))
        import yaml  # only for YAML configs: PyYAML is what such repos use

        return _flat(yaml.safe_load(text))
    except Exception:  # a config we cannot read offers no knobs; never a reason to fail
        return {}


def find_knobs(root: Path, config_files: list[str]) -> dict[str, dict[str, Any]]:
    """Declarations (`[knobs.NAME]` keys) for the numbers and booleans of the config files,
    in their order: a setting found again in a later file (a default the config overrides,
    as nanoGPT's train.py and its config/*.py have) keeps its first declaration."""
    out: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, str]] = set()  # (kind of file, key): the same setting again
    for rel in config_files:
        for key, value in _config_knobs(rel, _read(root, rel)).items():
            leaf = key.rsplit(".", 1)[-1]
            words = set(re.split(r"[._\-]", key.lower()))
            if type(value) not in (int, float, bool) or words & _NOT_KNOBS:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                continue  # 0 or negative: a switch or a sentinel more often than a setting
            if (Path(rel).suffix, key) in seen:
                continue
            seen.add((Path(rel).suffix, key))
            name = (
                leaf
                if leaf not in out and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", leaf)
                else key.replace(".", "_")
            )
            decl: dict[str, Any] = {"file": rel}
            if key != name:
                decl["key"] = key
            out[name] = decl
            if len(out) >= MAX_KNOBS:
                return out
    return out


_SEED_CALL = re.compile(
    r"^[^#\n]*\b(?:manual_seed|seed|default_rng|set_seed|PRNGKey)\s*\(.*$", re.M
)


def detect(
    root: Path,
    *,
    train: str | None = None,
    metric: str | None = None,
    pattern: str | None = None,
    direction: str | None = None,
    editable: list[str] | None = None,
    ask: Callable[[str], str] | None = None,
) -> Proposal:
    """What to write for the repo at `root`; the options override detection. What cannot be
    told is asked with `ask` (a question -> the answer; the command line's prompt on a
    terminal), else a ConfigError (one line, naming the option to give)."""
    import shlex

    files = _files(root)
    if not train and ask is not None and find_script(root, files) is None:
        train = ask("training command (e.g. python src/train.py)").strip() or None
    if train:
        argv = shlex.split(train)
        script = next((a for a in argv if a.endswith(".py")), "")
    else:
        found = find_script(root, files)
        if found is None:
            raise ConfigError(
                f"{root}: cannot tell the training script (no train.py, no single *train*.py "
                "that runs as a script, no main.py); give it: --train 'python path/to/train.py'"
            )
        script, argv = found, ["python", found]
    py = [f for f in files if f.endswith(".py")]
    configs = [
        f
        for f in files
        if f.endswith(_CONFIG_SUFFIXES)
        and _CONFIG_NAME.search(f)
        and f not in (CONFIG_NAME, "pyproject.toml", "setup.py")
        and not Path(f).name.startswith(".")
    ]
    models = [f for f in py if _MODEL_NAME.search(f) and not _FROZEN_NAME.search(f)]
    chosen = editable or sorted({*([script] if script else []), *configs, *models})
    frozen_code = [
        f for f in py if _FROZEN_NAME.search(f) and f not in chosen and not f.startswith("test")
    ]
    # The metric: the train script's lines first, then the rest of the editable code.
    sources = {script: _read(root, script)} if script else {}
    sources.update({f: _read(root, f) for f in py if f not in sources and f not in frozen_code})
    if not (metric or pattern) and ask is not None and find_metric(sources) is None:
        metric = ask("name of the metric your code prints (e.g. val_loss)").strip() or None
        pattern = ask("regex whose group is its value (e.g. val loss ([0-9.]+))").strip() or None
    if pattern:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"--pattern {pattern!r}: not a regular expression ({e})") from None
    if metric or pattern:
        if not (metric and pattern):
            raise ConfigError("give both --metric NAME and --pattern REGEX (one number group)")
        name, regex = metric, pattern
        dirn = direction or ("max" if any(w in metric.lower() for w in _MAXIMISED) else "min")
    else:
        guess = find_metric(sources)
        if guess is None:
            raise ConfigError(
                f"{root}: cannot find a metric line in {script or 'the code'} (like "
                "print(f'val loss {loss:.4f}')); give it: --metric val_loss --pattern "
                "'val loss ([0-9.]+)'"
            )
        name, regex, dirn = guess
        dirn = direction or dirn
    proposal = Proposal(
        train=argv,
        script=script,
        metric=name,
        pattern=regex,
        direction=dirn,
        editable=chosen,
        frozen=[CONFIG_NAME, PROGRAM_NAME, *frozen_code],
        # Config files first: where both set a value, the config's is the one in force.
        knobs=find_knobs(root, [f for f in chosen if f in configs] + [script] * bool(script)),
    )
    code = "\n".join(sources.get(f, "") for f in chosen if f.endswith(".py"))
    pinned = _SEED_CALL.search(code)
    if pinned and "RSILAB_SEED" not in code:
        proposal.seeds_itself = pinned.group(0).strip()
        proposal.notes.append(
            f"the code seeds itself ({proposal.seeds_itself}): every run would give the same "
            "value; seed from the environment, e.g. int(os.environ.get('RSILAB_SEED', 0)), so "
            "the judge can measure the noise"
        )
    if "KeyboardInterrupt" in code:
        proposal.wrap_up = "SIGINT"
    if not proposal.knobs:
        proposal.notes.append(
            "no settings found to tune: declare them under [knobs] in rsilab.toml, or use "
            "--proposer llm / agent"
        )
    return proposal


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _pattern_toml(pattern: str) -> str:
    """A regex as TOML: a literal string (backslashes as they are) unless it holds a quote."""
    return f"'{pattern}'" if "'" not in pattern and "\n" not in pattern else json.dumps(pattern)


def render_config(p: Proposal, name: str) -> str:
    """The commented rsilab.toml for `p`."""
    lines = [
        "# rsilab.toml, proposed by `rsilab init` for this repo: review every line.",
        "# Reference: docs/own-code.md and docs/tasks.md (every key).",
        f"name = {_toml(name)}",
        f'description = "Improve {p.metric} ({"lower" if p.direction == "min" else "higher"} is better) within a fixed training budget."',
        "# Files the researcher may change (anything else stays as it is):",
        f"editable = {_toml(p.editable)}",
        "# Files that must not change (hash-checked, read-only in the sandbox):",
        f"frozen = {_toml(p.frozen)}",
        f"train = {_toml(' '.join(p.train))}   # `python` is rsilab's own interpreter",
        "# The metric is your script's own line (unsealed, marked so in the ledger); a frozen",
        '# evaluator script that reads a saved model is sealed: evaluator = "script:evaluate.py".',
        'evaluator = "in-process"',
        'data = "none"              # the script finds its own data',
        "budget = 60                # training seconds per run (RSILAB_BUDGET); the run is killed",
        "overhead = 60              # ... at budget + overhead (start-up, evaluation, saving)",
    ]
    if p.wrap_up:
        lines.append(
            f'wrap_up_signal = "{p.wrap_up}"   # sent at the budget: your KeyboardInterrupt handler wraps up'
        )
    else:
        lines.append(
            '# wrap_up_signal = "SIGUSR1"  # sent when the budget is up, for a loop that catches it'
        )
    lines += [
        "threads = 1                # CPU threads per run (OMP_NUM_THREADS, RSILAB_THREADS)",
        "",
        "[metric]",
        f"name = {_toml(p.metric)}",
        f"direction = {_toml(p.direction)}",
        "# The last match in the training log counts (its group: the number).",
        f"pattern = {_pattern_toml(p.pattern)}",
        "",
        "[judge]",
        "noise_runs = 3             # baseline runs under different seeds (RSILAB_SEED)",
    ]
    if p.seeds_itself:
        lines += [
            f"# NOTE: the code seeds itself ({p.seeds_itself[:80]}), so every run gives the",
            "# same value and no noise can be measured: seed from RSILAB_SEED, or declare the",
            "# noise you know: noise_sd = 0.01",
        ]
    lines += [
        "",
        "# The search space of the offline tuner: settings found in the editable config files.",
        "# Add `range = [low, high]`, `log = true`, `choices = [...]` or a condition",
        '# `when = { other = "value" }`; remove what must not move.',
    ]
    for name_, decl in p.knobs.items():
        lines.append(
            f"[knobs.{_toml(name_) if not re.fullmatch(r'[A-Za-z0-9_-]+', name_) else name_}]"
        )
        lines += [f"{k} = {_toml(v)}" for k, v in decl.items()]
    return "\n".join(lines) + "\n"


def render_program(p: Proposal, name: str) -> str:
    """The program.md template: what LLM and agent researchers read first."""
    better = "lower" if p.direction == "min" else "higher"
    return f"""# {name}: research program

Goal: a {better} `{p.metric}` at the end of a fixed training budget (see `budget` in
rsilab.toml; `RSILAB_BUDGET` in the environment, in seconds).

## The setup

- `{p.script}` trains and prints `{p.metric}`; rsilab reads the last line matching
  `{p.pattern}` in the training log. Keep that line printed, in that form.
- You may change: {", ".join(f"`{f}`" for f in p.editable)}.
- Frozen (never change): {", ".join(f"`{f}`" for f in p.frozen)}.

## What is fair game

Architecture, optimizer, schedule, batch size, regularisation, initialisation: anything
that makes the model better within the same budget on this machine.

## What is not

Changing how `{p.metric}` is computed or on which data, reading the validation data for
training, training past the budget, or ignoring the run's seed (`RSILAB_SEED`).

<!-- Describe here what you know about this model and what you would try first. -->
"""


def write(root: Path, p: Proposal, name: str) -> list[str]:
    """Write rsilab.toml and program.md into `root` (program.md only when absent); the paths
    written. Refuses (ConfigError) when an rsilab.toml exists."""
    config = root / CONFIG_NAME
    if config.exists():
        raise ConfigError(f"{config}: exists already; edit it, or remove it to propose a new one")
    text = render_config(p, name)
    tomllib.loads(text)  # a guard: what is written must load
    config.write_text(text)
    written = [CONFIG_NAME]
    program = root / PROGRAM_NAME
    if not program.exists():
        program.write_text(render_program(p, name))
        written.append(PROGRAM_NAME)
    return written


def commit(root: Path, written: list[str]) -> None:
    """Commit the written files, and only them, on the repo's current branch (other staged
    changes of the user stay staged): the research branch starts at that commit."""
    from rsilab.workspace import git

    git(root, "add", "--", *written)
    git(
        root,
        "commit",
        "-q",
        "--no-verify",
        "-m",
        "rsilab: rsilab.toml and program.md (rsilab init)",
        "--",
        *written,
    )


def wants_adopting(directory: Path, adopt: bool) -> bool:
    """Whether `rsilab init DIR` should propose an rsilab.toml: with --adopt, or for a git
    repo that has none."""
    return adopt or ((directory / ".git").exists() and not (directory / CONFIG_NAME).exists())


def adopt_repo(
    directory: Path,
    echo: Callable[[str], None],
    *,
    adopt: bool,
    train: str | None = None,
    metric: str | None = None,
    pattern: str | None = None,
    direction: str | None = None,
    ask: Callable[[str], str] | None = None,
) -> bool:
    """`rsilab init` on a repo without rsilab.toml: detect, write, say what was found. With
    `adopt` (--adopt), stop there for the user to review and commit (False); else commit the
    two files so the research branch can start (True). Nothing is written when detection
    fails (a one-line ConfigError)."""
    from rsilab.workspace import git

    root = directory.resolve()
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder: give the folder of your training code")
    has_git = (root / ".git").exists()
    if (
        not adopt
        and has_git
        and not git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    ):
        raise ConfigError(f"{root}: the repo has no commit yet; commit your code first")
    p = detect(root, train=train, metric=metric, pattern=pattern, direction=direction, ask=ask)
    written = write(root, p, root.name)
    echo(f"proposed {', '.join(written)} in {root}:")
    echo(f"  train:    {' '.join(p.train)}")
    echo(f"  metric:   {p.metric} ({p.direction}), the last match of '{p.pattern}' in the log")
    echo(f"  editable: {', '.join(p.editable)}")
    echo(f"  frozen:   {', '.join(p.frozen)}")
    echo(f"  knobs:    {', '.join(p.knobs) or '(none found)'}")
    for note in p.notes:
        echo(f"note: {note}")
    if adopt or not has_git:
        how = "commit them" if has_git else "make the folder a git repo with a first commit"
        echo(f"next: review {CONFIG_NAME} and {PROGRAM_NAME}, {how}, then `rsilab run {root}`")
        return False
    commit(root, written)
    return True
