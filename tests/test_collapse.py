"""Tests for the collapse study (rsilab.studies.collapse), the frozen sampler and the data guard.

Fast tests drive the real generation loop, datasets, manifests, ledger and report with an
injected trainer and sampler that need no torch (tests/collapse_helpers.py): the fake
"model" is a copy of its training bytes and "sampling" draws random windows of it (a
bootstrap, which loses rare words the way a real model's samples do). The sampler is
tested on small exported models whose outputs are known exactly; the guard through the
real runner, which refuses before any training starts. The slow tests run the bundled gpt
task for real (a few seconds of training per generation), including a kill -9 in the
middle of a study.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from collapse_helpers import FakeTrainer, make_study, write_corpus, write_task

from rsilab import provenance
from rsilab.config import TaskSpec, load_task
from rsilab.data import prepare
from rsilab.errors import ConfigError
from rsilab.paths import bundled_tasks_dir
from rsilab.results import Status
from rsilab.run import runner
from rsilab.studies.collapse import write_report
from rsilab.studies.collapse.check import verify
from rsilab.studies.collapse.metrics import (
    Reference,
    distinct_n,
    entropy,
    rare_tail,
    repetition,
    sample_metrics,
    words,
)
from rsilab.studies.collapse.mixes import Part, compose, parse_policies, parse_policy, real_slice
from rsilab.studies.collapse.report import ci95, summarize
from rsilab.studies.collapse.study import SHARED, Cell, Study, finished, parse_size

TESTS = Path(__file__).parent


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- metrics: exact values on hand-made samples --------------------------------------------


def test_words_entropy_distinct_and_repetition_exact() -> None:
    assert words(b"Don't STOP-me now, 42 o'clock'") == [
        b"don't",
        b"stop",
        b"me",
        b"now",
        b"o'clock",
    ]
    assert entropy([1, 1, 2]) == pytest.approx(1.5)
    assert entropy([5]) == 0.0 and entropy([]) == 0.0
    m = sample_metrics(b"aabb", Reference.of(b"x"))
    assert m["byte_entropy"] == pytest.approx(1.0)
    assert sample_metrics(b"abcd", Reference.of(b"x"))["byte_entropy"] == pytest.approx(2.0)
    assert sample_metrics(b"the cat the dog", Reference.of(b"x"))["word_entropy"] == pytest.approx(
        1.5
    )
    toks = list("ababa")
    assert distinct_n(toks, 1) == pytest.approx(2 / 5)
    assert distinct_n(toks, 2) == pytest.approx(2 / 4)
    assert distinct_n(toks, 3) == pytest.approx(2 / 3)
    assert distinct_n(toks, 6) == 0.0  # fewer words than n
    loop = list("abababab" + "ab")  # three 8-grams: abab.., baba.., abab.. (a repeat)
    assert repetition(loop, 8) == pytest.approx(1 / 3)
    assert repetition([str(i) for i in range(20)], 8) == 0.0


def test_rare_tail_takes_the_rarest_tenth_with_a_fixed_tie_break() -> None:
    from collections import Counter

    counts = Counter({"a": 50, "b": 30, "c": 10, "d": 5, "e": 3, "f": 2})  # 100 tokens
    assert rare_tail(counts) == {"f", "e", "d"}  # 2 + 3 + 5 = 10 <= 10; adding c would be 20
    ties = Counter({b"x": 1, b"y": 1, b"z": 1, b"big": 17})  # budget 2 of 20
    expected = sorted([b"x", b"y", b"z"], key=lambda w: hashlib.sha256(w).hexdigest())[:2]
    assert rare_tail(ties) == set(expected)


def test_tail_survival_mass_and_nonwords_exact() -> None:
    # Real: "common" x 90 and ten words once each: the tail is exactly those ten words.
    rare = [f"r{c}" for c in "abcdefghij"]
    real = " ".join(["common"] * 90 + rare).encode()
    ref = Reference.of(real)
    assert ref.tail_words == {w.encode() for w in rare}
    sample = b"common common ra rb rb zzz"  # 2 of 10 tail types; 3 of 6 tokens tail; 1 nonword
    m = sample_metrics(sample, ref)
    assert m["tail_types"] == pytest.approx(2 / 10)
    assert m["tail_mass"] == pytest.approx(3 / 6)
    assert m["nonwords"] == pytest.approx(1 / 6)
    assert m["words"] == 6
    assert sample_metrics(real, ref)["tail_mass"] == pytest.approx(0.10)  # by construction


def test_ci95_is_a_student_t_interval() -> None:
    mean, lo, hi = ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and lo is not None and hi is not None
    assert (hi - lo) / 2 == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    assert ci95([5.0]) == (5.0, None, None)


# --- policies and datasets ----------------------------------------------------------------


def test_policies_parse_and_refuse_nonsense() -> None:
    assert [p.label for p in parse_policies("replace, accumulate,mix:0.25")] == [
        "replace",
        "accumulate",
        "mix:0.25",
    ]
    for bad in ("mix", "mix:1.5", "mix:x", "copy", "replace:1"):
        with pytest.raises(ConfigError):
            parse_policy(bad)
    with pytest.raises(ConfigError):
        parse_policies("replace,replace")
    assert parse_size("16k") == 16384 and parse_size("full") == 0 and parse_size("1000") == 1000
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_real_slice_is_exact_in_order_and_spans_the_split() -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes
    body, how = real_slice(data, 5000)
    assert len(body) == 5000 and how["pieces"] == 5000 // 256
    assert body[:1] == data[:1] and body[-1:] == data[-1:]  # first and last pieces at the ends
    assert real_slice(data, 10**6)[0] == data


def test_compose_and_manifests_give_the_right_mixtures(tmp_path: Path) -> None:
    real = Part(b"R" * 1000, {"kind": "real", "origin": {"dataset_id": "x"}})
    syn = [Part(bytes([65 + j]) * 1000, {"kind": "generated", "generation": j}) for j in (1, 2)]
    shapes = {}
    for label in ("replace", "accumulate", "mix:0.3", "mix:0", "mix:1"):
        parts = compose(parse_policy(label), 2, real, syn)
        path = provenance.write_dataset(
            tmp_path / label.replace(":", "_"),
            b"".join(p.data for p in parts),
            [p.segment() for p in parts],
            dataset_id=label,
            source={},
        )
        rec = provenance.record(path)
        assert rec["locked"] and "problem" not in rec
        shapes[label] = (
            rec["kind"],
            rec["real_bytes"],
            rec["generated_bytes"],
            [(s["kind"], s.get("generation")) for s in rec["segments"]],
        )
    assert shapes["replace"] == ("generated", 0, 1000, [("generated", 2)])
    assert shapes["accumulate"] == (
        "mixed",
        1000,
        2000,
        [("real", None), ("generated", 1), ("generated", 2)],
    )
    assert shapes["mix:0.3"] == ("mixed", 300, 700, [("real", None), ("generated", 2)])
    assert shapes["mix:0"] == ("generated", 0, 1000, [("generated", 2)])
    assert shapes["mix:1"] == ("real", 1000, 0, [("real", None)])


# --- the generation loop --------------------------------------------------------------------


def test_generation_loop_trains_on_the_policy_mixtures(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    trainer = study.trainer
    assert isinstance(trainer, FakeTrainer)
    rows = study.run()
    done = finished(rows)
    plan = study.cells()
    assert len(plan) == 2 + 2 * 2 * 3 and set(done) == set(plan)  # shared g0, then 3 policies
    assert len(trainer.calls) == len(plan) and len(rows) == len(plan)
    n = len(study.real.data)
    assert n == 4096

    def train_record(cell: Cell) -> dict[str, object]:
        return done[cell]["data"]["train"]

    def samples_of(cell: Cell) -> str:
        return str(done[cell]["samples"]["sha256"])

    for seed in (0, 1):
        g0 = Cell(SHARED, seed, 0)
        assert train_record(g0)["kind"] == "real" and train_record(g0)["real_bytes"] == n
        for g in (1, 2):
            rep = train_record(Cell("replace", seed, g))
            assert rep["kind"] == "generated" and rep["real_bytes"] == 0 and rep["size"] == n
            acc = train_record(Cell("accumulate", seed, g))
            parts = acc["parts"]
            assert isinstance(parts, list)
            assert [(p["kind"], p.get("generation")) for p in parts] == [
                ("real", None),
                *(("generated", j) for j in range(1, g + 1)),
            ]
            # S_1 is generation 0's samples, S_2 accumulate g1's: the very bytes, by hash
            assert parts[1]["sha256"] == samples_of(g0)
            if g == 2:
                assert parts[2]["sha256"] == samples_of(Cell("accumulate", seed, 1))
            mix = train_record(Cell("mix:0.5", seed, g))
            assert mix["real_bytes"] == round(0.5 * n) and mix["generated_bytes"] == n - round(
                0.5 * n
            )
        # The generated segment names the model that produced it, down to its artifact hash.
        acc2 = provenance.record(
            study.out / "cells" / "accumulate" / f"s{seed}" / "g2" / "data" / "train.bin"
        )
        model = acc2["segments"][2]["model"]
        made_by = study.out / model["run"] / "artifact" / "model.pt2"
        assert (
            model["generation"] == 1 and model["policy"] == "accumulate" and model["seed"] == seed
        )
        assert model["artifact_sha256"] == _sha(made_by.read_bytes()) and model["code_sha256"]
    # The fake's val_bpb is 1 + the generated share: replace 2.0, accumulate g2 1 + 2/3.
    assert done[Cell("replace", 0, 2)]["val_bpb"] == pytest.approx(2.0)
    assert done[Cell("accumulate", 0, 2)]["val_bpb"] == pytest.approx(1 + 2 / 3)
    assert verify(study, rows) == []  # what `rsilab collapse --check` asserts, on these cells


def test_report_writes_table_files_and_plot(tmp_path: Path) -> None:
    study = make_study(tmp_path, seeds=2, generations=1, policies="replace,accumulate")
    rows = study.run()
    text = write_report(study, rows)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["policy", "gen", "n", "val_bpb"]
    assert any(line.startswith("replace") and line.split()[1] == "1" for line in lines)
    assert any(line.startswith("real R") for line in lines)
    for name in ("collapse.png", "collapse_cells.csv", "collapse_summary.csv", "collapse.json"):
        assert (study.out / name).stat().st_size > 0
    dump = json.loads((study.out / "collapse.json").read_text())
    summary = {(e["policy"], e["generation"]): e for e in dump["summary"]}
    assert summary[("replace", 0)]["n"] == 2  # the shared generation 0 shows under each policy
    assert summary[("replace", 1)]["val_bpb"]["mean"] == pytest.approx(2.0)
    assert summary[("replace", 1)]["val_bpb"]["low"] == pytest.approx(2.0)  # no spread, no band
    assert summarize(rows)[0]["policy"] in ("replace", "accumulate")


def test_rerun_skips_finished_cells_and_extends_the_plan(tmp_path: Path) -> None:
    first = make_study(tmp_path, generations=1, policies="replace,accumulate", seeds=1)
    rows = first.run()
    assert len(rows) == 3
    second = make_study(tmp_path, generations=2, policies="replace,accumulate", seeds=1)
    rows = second.run()
    trainer = second.trainer
    assert isinstance(trainer, FakeTrainer)
    assert [c[1].parent.name for c in trainer.calls] == ["g2", "g2"]  # only the new generation
    assert len(rows) == 5 and set(finished(rows)) == set(second.cells())
    with pytest.raises(ConfigError, match="size"):  # incomparable settings are refused
        make_study(tmp_path, size=2048)


def test_a_failed_cell_ends_its_chain_and_is_retried(tmp_path: Path) -> None:
    # Call 2 is replace g1 (generation-major order: g0, replace g1, accumulate g1, ...).
    study = make_study(
        tmp_path, trainer=FakeTrainer(fail={2}), policies="replace,accumulate", seeds=1
    )
    rows = study.run()
    statuses = {(r["policy"], r["generation"]): r["status"] for r in rows}
    assert statuses[("replace", 1)] == "crash" and ("replace", 2) not in statuses
    assert statuses[("accumulate", 2)] == "ok"  # other chains go on
    crash = next(r for r in rows if r["status"] == "crash")
    assert crash["run"]["log_tail"] == "boom" and crash["val_bpb"] is None
    rows = make_study(tmp_path, policies="replace,accumulate", seeds=1).run()
    assert set(finished(rows)) == {
        Cell(SHARED, 0, 0),
        *(Cell(p, 0, g) for p in ("replace", "accumulate") for g in (1, 2)),
    }


def test_one_study_at_a_time_per_folder(tmp_path: Path) -> None:
    import fcntl

    study = make_study(tmp_path, seeds=1, generations=1)
    with open(study.out / ".rsilab" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running `rsilab collapse` holds it
        with pytest.raises(ConfigError, match="another `rsilab collapse` is running"):
            study.run()
    assert len(study.run()) == 4  # free again


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import collapse_helpers as h
trainer = h.FakeTrainer(block_at={block_at}, fifo=Path({fifo!r}))
study = h.make_study(Path({tmp!r}), trainer, policies="replace,accumulate", seeds=1)
study.run()
print("FINISHED", flush=True)
"""


def test_kill_9_mid_generation_then_resume(tmp_path: Path) -> None:
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    make_study(tmp_path)  # prepares the corpus and task once (the child reuses them)
    shutil.rmtree(tmp_path / "out")
    script = _CHILD.format(tests=str(TESTS), block_at=4, fifo=str(fifo), tmp=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()  # the child blocks inside its 4th training: replace g2
    assert line.strip() == "BLOCKED", line
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL

    study = make_study(tmp_path, policies="replace,accumulate", seeds=1)
    before = {(r["policy"], r["generation"]): r["id"] for r in _rows(study)}
    assert set(before) == {(SHARED, 0), ("replace", 1), ("accumulate", 1)}  # nothing half-recorded
    assert (study.out / "cells" / "replace" / "s0" / "g2" / "half-done").exists()
    rows = study.run()
    trainer = study.trainer
    assert isinstance(trainer, FakeTrainer)
    assert [c[1].parent.parent.parent.name + "/" + c[1].parent.name for c in trainer.calls] == [
        "replace/g2",
        "accumulate/g2",
    ]  # finished cells are not redone
    assert not (study.out / "cells" / "replace" / "s0" / "g2" / "half-done").exists()
    assert set(finished(rows)) == set(study.cells()) and len(rows) == 5
    assert {
        (r["policy"], r["generation"]): r["id"]
        for r in rows
        if (r["policy"], r["generation"]) in before
    } == before


def _rows(study: Study) -> list[dict[str, object]]:
    from rsilab.record.ledger import Ledger

    with Ledger(study.ledger_path) as ledger:
        return ledger.collapse_cells()


# --- the guard --------------------------------------------------------------------------------


def _prepared(tmp_path: Path) -> tuple[Path, Path]:
    data = prepare(str(write_corpus(tmp_path / "corpus.txt", lines=400)), home=tmp_path / "data")
    return data.train_path, data.val_path


def _generated(tmp_path: Path, name: str = "gen") -> Path:
    segment = {
        "kind": "generated",
        "generation": 1,
        "size": 3000,
        "model": {"artifact_sha256": "0" * 64, "commit": None},
        "temperature": 1.0,
    }
    return provenance.write_dataset(
        tmp_path / name, b"x" * 3000, [segment], dataset_id=name, source={}
    )


def _gpt_task(tmp_path: Path, **keys: object) -> TaskSpec:
    task_dir = tmp_path / "gpt"
    shutil.copytree(bundled_tasks_dir() / "gpt", task_dir)
    return load_task(task_dir, list(keys.items()))


def test_runner_refuses_generated_or_unlocked_validation_data(tmp_path: Path) -> None:
    train, val = _prepared(tmp_path)
    task = _gpt_task(tmp_path)
    tampered = tmp_path / "tampered"
    shutil.copytree(val.parent, tampered)
    (tampered / "val.bin").write_bytes(val.read_bytes()[:-1] + b"!")
    loose = tmp_path / "loose" / "val.bin"
    loose.parent.mkdir()
    loose.write_bytes(val.read_bytes())
    cases = {
        _generated(tmp_path): "it must be real",
        tampered / "val.bin": "does not match the sha256",
        loose: "no manifest.json",
    }
    for bad, why in cases.items():
        run_dir = tmp_path / f"run-{bad.parent.name}"
        r = runner.run(task, task.root, run_dir, seed=0, train_data=train, val_data=bad)
        assert r.status is Status.INVALID, r
        assert r.reason.startswith("invalid: validation data refused") and why in r.reason
        assert "\n" not in r.reason
        assert not (run_dir / "train.log").exists()  # refused before any training
        assert r.evaluation["data"]["val"]["path"] == str(bad.resolve())


def test_generated_training_data_needs_the_task_to_allow_it(tmp_path: Path) -> None:
    _, val = _prepared(tmp_path)
    gen = _generated(tmp_path)
    strict = _gpt_task(tmp_path)
    r = runner.run(strict, strict.root, tmp_path / "r1", seed=0, train_data=gen, val_data=val)
    assert r.status is Status.INVALID and "allow_generated_data = true" in r.reason
    # A toy task (numpy, 1 s) that allows it runs, and its record says so.
    toy = tmp_path / "toy"
    shutil.copytree(bundled_tasks_dir() / "toy", toy)
    task = load_task(toy, [("allow_generated_data", True), ("budget", 1)])
    r = runner.run(task, toy, tmp_path / "r2", seed=0, train_data=gen, val_data=val)
    assert r.status is Status.OK, r.reason
    data = r.evaluation["data"]
    assert data["generated_train_data"] is True and data["allow_generated_data"] is True
    assert data["train"]["kind"] == "generated" and data["train"]["segments"][0]["generation"] == 1
    assert data["val"]["kind"] == "real" and data["val"]["locked"] is True
    assert provenance.uses_generated_data(r.evaluation)
    assert provenance.experiment_flags(task.allow_generated_data) == {"allow_generated_data": True}
    assert provenance.experiment_flags(strict.allow_generated_data) == {}


def test_provenance_records_real_legacy_and_lying_manifests(tmp_path: Path) -> None:
    train, val = _prepared(tmp_path)
    rec = provenance.record(train)
    assert rec["kind"] == "real" and rec["locked"] and rec["source"]["kind"] == "local"
    assert rec["sha256"] == _sha(train.read_bytes())
    # A manifest written before provenance entries existed: prepare's data, so real.
    legacy = tmp_path / "legacy"
    shutil.copytree(val.parent, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["provenance"]
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    assert provenance.check_val(legacy / "val.bin")[1] is None
    # A manifest that calls generated segments real is refused.
    gen = _generated(tmp_path, "liar")
    manifest = json.loads((gen.parent / "manifest.json").read_text())
    manifest["provenance"]["train.bin"]["kind"] = "real"
    (gen.parent / "manifest.json").write_text(json.dumps(manifest))
    rec, reason = provenance.check_val(gen)
    assert reason is not None and "segments say generated" in reason


# --- the frozen sampler -------------------------------------------------------------------------


def _export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule: str, batch: int = 3, seq: int = 8
) -> Path:
    """Export a model whose next byte is exactly `rule` of the last two bytes."""
    import torch
    import torch.nn.functional as F

    from rsilab import harness

    class Rule(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            prev = F.pad(x[:, :-1], (1, 0))  # the byte before each position (0 at the start)
            nxt = (x + 1) % 256 if rule == "succ" else (x + prev) % 256
            return F.one_hot(nxt, 256).float() * 50.0

    art = tmp_path / f"art-{rule}"
    monkeypatch.setenv(harness.ENV_ARTIFACT_DIR, str(art))
    harness.save_model(Rule(), torch.zeros(batch, seq, dtype=torch.long))
    return art


def test_sampler_slides_its_window_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rsilab.harness.sample import START_BYTE, sample

    # Greedy from "\n" with next = last + previous: a Fibonacci mod 256, well past the
    # 8-byte window, so both the filling phase and the sliding phase are checked.
    art = _export(tmp_path, monkeypatch, "fib")
    seq = [START_BYTE, START_BYTE]  # position 0 sees a zero pad before it: 10 + 0 = 10
    while len(seq) < 2 + 30:
        seq.append((seq[-1] + seq[-2]) % 256)
    expected_stream = bytes(seq[1:31])
    out = sample(art, 3 * 30, temperature=0.0, seed=0)
    assert out == expected_stream * 3  # three identical greedy streams, concatenated
    assert len(sample(art, 50, temperature=0.0, seed=0)) == 50  # cut to exactly n bytes


def test_sampler_is_seeded_and_its_process_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rsilab.harness.sample import sample

    art = _export(tmp_path, monkeypatch, "succ")
    assert sample(art, 40, 0.0, 0) == (bytes(range(11, 25)) * 3)[:40]  # greedy: 11, 12, ...
    hot = [sample(art, 60, 5000.0, s) for s in (1, 1, 2)]  # nearly uniform at this temperature
    assert hot[0] == hot[1] and hot[0] != hot[2]
    out = tmp_path / "s.bin"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsilab.harness.sample",
            "--artifact",
            str(art),
            "--out",
            str(out),
            "--bytes",
            "30",
            "--temperature",
            "0",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == bytes(range(11, 21)) * 3 and json.loads(proc.stdout)["bytes"] == 30
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsilab.harness.sample",
            "--artifact",
            str(tmp_path),
            "--out",
            str(out),
            "--bytes",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 3 and "no exported model" in bad.stderr


def test_cli_refuses_a_bad_policy_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rsilab.cli import main

    task = write_task(tmp_path / "task", write_corpus(tmp_path / "corpus.txt", lines=50))
    got = CliRunner().invoke(
        main, ["collapse", str(tmp_path / "out"), "--task", str(task), "--policies", "copy"]
    )
    assert (
        got.exit_code == 2
        and got.output.count("\n") == 1
        and "use replace, accumulate or mix:p" in got.output
    )


# --- for real: the gpt task, a few seconds per generation (slow) --------------------------------


def _gpt_tiny(tmp_path: Path) -> Path:
    task = tmp_path / "gpt"
    shutil.copytree(bundled_tasks_dir() / "gpt", task)
    corpus = write_corpus(tmp_path / "corpus.txt", lines=3000)
    toml = (task / "rsilab.toml").read_text().replace('data = "shakespeare"', f'data = "{corpus}"')
    (task / "rsilab.toml").write_text(toml)
    return task


def _rsilab(*args: str) -> list[str]:
    return [sys.executable, "-m", "rsilab.cli", *args]


@pytest.mark.slow
def test_check_runs_the_real_pipeline(tmp_path: Path) -> None:
    task = _gpt_tiny(tmp_path)
    proc = subprocess.run(
        _rsilab(
            "collapse",
            str(tmp_path / "check"),
            "--check",
            "--task",
            str(task),
            "--set",
            "budget=1",
            "--set",
            "eval.bytes=4096",
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "collapse check: ok: the pipeline works" in proc.stdout


@pytest.mark.slow
def test_real_study_resumes_after_kill_9(tmp_path: Path) -> None:
    task = _gpt_tiny(tmp_path)
    out = tmp_path / "study"
    args = _rsilab(
        "collapse",
        str(out),
        "--task",
        str(task),
        "--generations",
        "1",
        "--seeds",
        "1",
        "--policies",
        "replace,accumulate",
        "--size",
        "1k",
        "--set",
        "budget=1",
        "--set",
        "eval.bytes=4096",
    )
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    for line in child.stdout:  # the first finished cell, then kill while the next one runs
        if "val_bpb" in line:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    study_ledger = out / ".rsilab" / "ledger.db"
    from rsilab.record.ledger import Ledger

    with Ledger(study_ledger) as ledger:
        before = ledger.collapse_cells()
    assert [(r["policy"], r["status"]) for r in before] == [(SHARED, "ok")]
    proc = subprocess.run(
        _rsilab("collapse", str(out)), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 of 3 cells already done, 2 to run" in proc.stdout
    with Ledger(study_ledger) as ledger:
        rows = ledger.collapse_cells()
    assert rows[0]["id"] == before[0]["id"] and len(rows) == 3
    assert all(r["status"] == "ok" and 0 < r["val_bpb"] < 9 for r in rows)
    assert (out / "collapse.png").is_file()
