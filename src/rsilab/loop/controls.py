"""Human control of a running research loop. Owns: control actions and how they are recorded.

A person steers through the ledger, never by signalling the supervisor: `post()` writes an
event of kind "control" (action, payload, time, source such as "dashboard@127.0.0.1"), and
the supervisor, in its own process, reads the new ones with `Controls.poll()` once per
loop iteration. The two processes share only the ledger (SQLite in WAL mode, so the
dashboard writes while the supervisor reads) and the workspace folder.

Actions and their meaning:

- `pause` / `resume`: a level, not an edge: the latest of the two wins and outlives a
  restart (`paused()` reads the ledger each time, so a supervisor waiting in a pause sees
  a resume within its polling interval).
- `stop`: stop after the current experiment. A stop only stops a running supervisor: one
  posted while none ran is cleared, with a message, when the next one starts
  (`clear_stale_stops`), as `rsilab run` clears a stop file left from then.
- `queue_idea`: written at once as a file into `.rsilab/queue/` (see `queue_idea`), so
  it is never lost even when no supervisor runs; the queue proposer takes knob edits and
  patches, LLM proposers read free-text `*.idea.md` files.
- `veto`: undo a kept change (see `Controls.apply_veto`); applied by the supervisor,
  between experiments, because only it moves the research branch.
- `note`: a pinned note, shown by the report and the dashboard.

The supervisor's read position is stored in the ledger's `settings` table
(`controls.cursor`), so actions posted while no supervisor ran are delivered to the next.
Not covered: who may post (the dashboard checks its token), and what the supervisor does
with an action beyond the helpers here.
"""

from __future__ import annotations

import json
import math
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsilab.errors import RsilabError
from rsilab.fsio import atomic_write
from rsilab.notify import Notify
from rsilab.record.ledger import Event, Experiment, Ledger
from rsilab.results import Verdict
from rsilab.workspace import Workspace

KIND = "control"  # the ledger event kind of every control action
ACTIONS = ("pause", "resume", "stop", "queue_idea", "veto", "note")
CURSOR_KEY = "controls.cursor"
STALE_KEY = "controls.stale_stops"  # stops with an id up to this one were posted while none ran
MAX_TEXT = 20_000  # characters of a note or an idea
MAX_PATCH = 1_000_000  # characters of a queued patch
IDEA_SUFFIX = ".idea.md"  # free text for LLM proposers; the queue proposer skips it
HUMAN = "human"  # the `source` of decisions made by a person


class ControlError(RsilabError):
    """A control action that cannot be taken (unknown action, bad payload, nothing to veto)."""


@dataclass(frozen=True)
class Action:
    """One control action as recorded in the ledger."""

    id: int  # the event id: increasing, the order actions were posted in
    action: str
    payload: dict[str, Any]
    source: str
    created_at: float  # unix seconds
    message: str = ""

    @classmethod
    def from_event(cls, ev: Event) -> Action:
        payload = {k: v for k, v in ev.data.items() if k != "action"}
        return cls(ev.id, str(ev.data.get("action", "")), payload, ev.source, ev.created_at,
                   ev.message)  # fmt: skip

    def __str__(self) -> str:
        return f"{self.message} (by {self.source} at {time.strftime('%H:%M:%S', time.localtime(self.created_at))})"


def actions(ledger: Ledger, after_id: int = 0) -> list[Action]:
    """Every control action with an id above `after_id`, oldest first."""
    return [Action.from_event(ev) for ev in ledger.events_after(after_id, KIND)]


def post(ledger: Ledger, action: str, payload: dict[str, Any] | None = None,
         source: str = "cli") -> Action:  # fmt: skip
    """Record a control action (validated first); returns it as stored.

    Payloads: pause / resume / stop: optional `reason`; note: `text`; veto: `experiment`
    (an id) and `reason`; queue_idea: one of `text`, `patch` or `knobs` (a table of knob
    values), with an optional `description`. A queued idea is written to the queue folder
    next to the ledger (both live in the workspace's `.rsilab/`) before it is recorded.
    """
    if action not in ACTIONS:
        raise ControlError(f"unknown control action {action!r} (one of {', '.join(ACTIONS)})")
    data = dict(payload or {})
    reason = _text(data.get("reason", ""), "reason", required=False)
    if action in ("pause", "resume", "stop"):
        data = {"reason": reason} if reason else {}
        message = action + (f": {reason}" if reason else "")
    elif action == "note":
        data = {"text": _text(data.get("text"), "note")}
        message = f"note: {data['text']}"
    elif action == "veto":
        exp_id = _experiment_id(data.get("experiment"))
        exp = _vetoable(ledger, exp_id)
        data = {"experiment": exp_id, "reason": reason or "vetoed by a person"}
        message = f"veto #{exp_id} ({exp.description}): {data['reason']}"
    else:
        path = queue_idea(ledger.path.parent / "queue", data)
        # The idea itself is part of the record (the queue file moves on and may be deleted).
        data = {k: data[k] for k in ("description", "text", "patch", "knobs") if data.get(k)}
        data["file"] = path.name
        message = f"queued {path.name}"
    event_id = ledger.add_event(KIND, message, data={"action": action, **data}, source=source)
    return actions(ledger, event_id - 1)[0]


def parse_knobs(text: str) -> dict[str, Any]:
    """`"LR=0.002, DEPTH=4 ACT='gelu'"` -> {"LR": 0.002, "DEPTH": 4, "ACT": "gelu"}; each
    value is read as TOML (a bare word that is not a TOML value is taken as a string)."""
    knobs: dict[str, Any] = {}
    for part in re.split(r"[,\n]+|\s+(?=[A-Za-z_][A-Za-z0-9_]*\s*=)", text):
        if not part.strip():
            continue
        name, eq, raw = part.partition("=")
        name, raw = name.strip(), raw.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not raw:
            raise ControlError(f"knob edit {part.strip()!r}: write NAME=VALUE, e.g. LR=0.002")
        try:
            knobs[name] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            knobs[name] = raw.strip("'\"")
    if not knobs:
        raise ControlError("no knob edit given (write NAME=VALUE, e.g. LR=0.002)")
    return knobs


def queue_idea(queue_dir: Path, idea: str | dict[str, Any]) -> Path:
    """Write an idea into the queue folder; returns the file. Formats, by what `idea` holds:

    - `{"knobs": {"LR": 0.002}, "description": "..."}` -> `NAME.toml` (`description = "..."`
      and a `[knobs]` table), taken by the queue proposer;
    - `{"patch": "diff --git ..."}` or a string that is a unified diff -> `NAME.patch`, its
      first line `# <description>` (git apply skips it; the queue reads it as the
      description), taken by the queue proposer;
    - `{"text": "..."}` or any other string -> `NAME.idea.md`: free text for LLM proposers
      (the first line is the summary); the queue proposer ignores it.

    NAME is `<UTC time>-<nanoseconds>-<slug>`: the queue takes files in name order, so
    ideas queued here run in the order they were posted. The file appears atomically.
    """
    item: dict[str, Any] = dict(idea) if isinstance(idea, dict) else (
        {"patch": idea} if _looks_like_diff(idea) else {"text": idea})  # fmt: skip
    description = _text(item.get("description", ""), "description", required=False)
    description = " ".join(description.split())
    if item.get("knobs"):
        knobs = item["knobs"]
        if not isinstance(knobs, dict):
            raise ControlError("knobs must be a table of NAME = value")
        description = description or ", ".join(f"{k}={v}" for k, v in knobs.items())
        lines = [f"description = {_toml(description)}", "", "[knobs]"]
        lines += [f"{_toml_key(str(k))} = {_toml(v)}" for k, v in knobs.items()]
        body, suffix = "\n".join(lines) + "\n", ".toml"
    elif item.get("patch"):
        patch = str(item["patch"]).replace("\r\n", "\n")
        if len(patch) > MAX_PATCH:
            raise ControlError(f"the patch is longer than {MAX_PATCH} characters")
        if not _looks_like_diff(patch):
            raise ControlError("the patch is not a unified diff (no ---/+++ lines)")
        if description and not patch.startswith("#"):
            patch = f"# {description}\n{patch}"
        description = description or _first_line(patch)
        body, suffix = patch if patch.endswith("\n") else patch + "\n", ".patch"
    else:
        text = _text(item.get("text"), "idea")
        description = description or _first_line(text)
        body, suffix = text.rstrip() + "\n", IDEA_SUFFIX
    # One clock read for both parts: seconds and nanoseconds from two reads are out of order
    # across a second boundary, and the queue runs files in name order.
    seconds, nanos = divmod(time.time_ns(), 10**9)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds))
    name = f"{stamp}-{nanos:09d}-{_slug(description)}{suffix}"
    queue_dir.mkdir(parents=True, exist_ok=True)
    # Written under a dot name (the queue skips those), then renamed: never read half-written.
    atomic_write(queue_dir / name, body)
    return queue_dir / name


class Controls:
    """The supervisor's side: new actions since the last poll, and the helpers to act on them.

    Integration: a serial loop calls `handle()` once per iteration, between experiments
    (it applies vetoes and blocks while paused). A loop with experiments in flight calls
    `apply(a)` for each `a` in `poll()` every turn and starts nothing new while `paused()`
    (the runs in flight finish and are judged). Both stop once `stop_requested()`.
    """

    def __init__(self, ws: Workspace, ledger: Ledger) -> None:
        self.ws, self.ledger = ws, ledger
        self._cursor = int(ledger.get_setting(CURSOR_KEY, 0) or 0)
        self._stop = False

    def poll(self) -> list[Action]:
        """Actions posted since the last poll (by any process), oldest first. The read
        position is saved in the ledger, so each action is delivered once, also across restarts."""
        new = actions(self.ledger, self._cursor)
        if new:
            self._cursor = new[-1].id
            self.ledger.set_setting(CURSOR_KEY, self._cursor)
            self._stop = self._stop or any(live_stop(self.ledger, a) for a in new)
        return new

    def paused(self) -> bool:
        """True while the latest pause/resume action is a pause (read fresh from the ledger)."""
        return self.pause_action() is not None

    def pause_action(self, upto: int | None = None) -> Action | None:
        """The pause in force, if any (who paused, when, why); with `upto`, as of the action
        with that id (later actions are not looked at)."""
        for a in reversed(actions(self.ledger)):
            if upto is not None and a.id > upto:
                continue
            if a.action in ("pause", "resume"):
                return a if a.action == "pause" else None
        return None

    def stop_requested(self) -> bool:
        """True once a stop action past the saved read position exists (delivered by
        `poll`, or still waiting for it): the supervisor stops after its current experiment."""
        if not self._stop:
            pending = actions(self.ledger, self._cursor)
            self._stop = any(live_stop(self.ledger, a) for a in pending)
        return self._stop

    def handle(self, say: Notify | None = None, interval: float = 1.0,
               should_stop: Callable[[], bool] | None = None) -> list[Action]:  # fmt: skip
        """The supervisor's one call per loop iteration, between experiments.

        Takes the new actions: vetoes are applied (see `apply_veto`), the others are told to
        `say`. While paused it waits here, reading the ledger every `interval` seconds (a
        veto posted during the pause is applied at once). Returns, with the actions it
        took, when not paused, when a stop is requested, or when `should_stop()` is true.
        """
        tell = say or (lambda message: None)
        taken: list[Action] = []
        waiting = False
        while True:
            for a in self.poll():
                taken.append(a)
                if a.action not in ("pause", "resume"):  # those are told below, once
                    tell(self.apply(a))
            # As of what poll() delivered, not a fresh read: a resume posted after the poll
            # would end the wait without being taken (or told); the next turn takes it.
            pause = self.pause_action(upto=self._cursor)
            if (
                pause is None
                or self.stop_requested()
                or (should_stop is not None and should_stop())
            ):
                if waiting:
                    tell("resumed" if pause is None else "stop requested during the pause")
                return taken
            if not waiting:
                tell(f"paused: {pause}; resume from the dashboard")
                waiting = True
            time.sleep(interval)

    def apply(self, a: Action) -> str:
        """Act on one polled action; returns a line for the supervisor's log. Only a veto
        does something here (pause and stop are levels the supervisor reads; ideas are
        already files in the queue); one that can no longer apply (e.g. vetoed twice) is
        recorded as an event, never raised into the loop."""
        if a.action != "veto":
            return f"control: {a}"
        try:
            return self.apply_veto(int(a.payload["experiment"]), str(a.payload.get("reason", "")))
        except (ControlError, KeyError, ValueError) as e:
            message = f"veto #{a.payload.get('experiment')} not applied: {e}"
            self.ledger.add_event("veto", message, data=dict(a.payload), source="supervisor")
            return message

    def apply_veto(self, experiment_id: int, reason: str, source: str = HUMAN) -> str:
        """Undo a kept change; returns what was done, one line (also recorded as an event).

        - The incumbent: a new decision "discard" (source "human", the reason) makes the
          previous kept experiment the incumbent again, and the research branch is reset to
          its commit. The decision is written first, so `Supervisor.recover()` finishes the
          reset if the process dies in between.
        - An older keep: its change is already part of every later incumbent, so moving the
          branch back would also throw away the good changes kept after it. The veto is
          recorded as a "discard" decision (so reports and results.tsv show the person's
          call; the incumbent does not change), and the reverse of its diff is queued as a
          patch "revert #N", which is judged like any other change on top of the current
          incumbent (if later changes touched the same lines, the queue rejects it with a
          reason and the person can queue a hand-made revert).
        - Anything else (a discard, a crash, the baseline, an unknown id): ControlError.
        """
        exp = _vetoable(self.ledger, experiment_id)
        why = f"vetoed by a person: {reason}" if reason else "vetoed by a person"
        inc = self.ledger.incumbent()
        if inc is not None and inc.id == exp.id:
            self.ledger.add_decision(exp.id, verdict=Verdict.DISCARD, reason=why, source=source,
                                     metric=exp.metric, effect=exp.effect, ci_low=exp.ci_low,
                                     ci_high=exp.ci_high, p_value=exp.p_value)  # fmt: skip
            previous = self.ledger.incumbent()
            assert previous is not None  # the baseline is a keep that cannot be vetoed
            self.ws.reset_branch(previous.commit)
            done = (f"veto #{exp.id}: discarded; {self.ws.branch} reset to #{previous.id} "
                    f"({previous.commit[:7]})")  # fmt: skip
        else:
            revert = self.ws.diff(exp.commit, exp.parent) if exp.parent else ""
            self.ledger.add_decision(exp.id, verdict=Verdict.DISCARD, reason=why, source=source,
                                     metric=exp.metric, effect=exp.effect, ci_low=exp.ci_low,
                                     ci_high=exp.ci_high, p_value=exp.p_value)  # fmt: skip
            done = f"veto #{exp.id}: recorded as discarded (not the incumbent)"
            if revert.strip():
                path = queue_idea(
                    self.ws.queue_dir,
                    {"patch": revert, "description": f"revert #{exp.id}: {exp.description}"},
                )
                done += f"; its revert is queued as {path.name}"
        self.ledger.add_event("veto", done, data={"experiment": exp.id, "reason": reason},
                              source=source)  # fmt: skip
        return done

    def queue_idea(self, idea: str | dict[str, Any]) -> Path:
        """Write an idea into this workspace's queue (see the module-level `queue_idea`)."""
        return queue_idea(self.ws.queue_dir, idea)

    def pin_note(self, text: str, source: str = "supervisor") -> Action:
        """Pin a note (shown by the report and the dashboard)."""
        return post(self.ledger, "note", {"text": text}, source)


def clear_stale_stops(ledger: Ledger) -> list[Action]:
    """Called by a supervisor as it starts (holding the workspace lock): the stops posted
    while no supervisor ran, not yet read, are cleared (they stop nothing); returns them so
    the caller can say so. The other actions posted meanwhile (pause, ideas, vetoes, notes)
    are still delivered."""
    cursor = int(ledger.get_setting(CURSOR_KEY, 0) or 0)
    pending = actions(ledger, cursor)
    stale = [a for a in pending if live_stop(ledger, a)]
    if pending:
        ledger.set_setting(STALE_KEY, pending[-1].id)
    return stale


def live_stop(ledger: Ledger, a: Action) -> bool:
    """A stop action that was posted while a supervisor ran (or since the last one started)."""
    return a.action == "stop" and a.id > int(ledger.get_setting(STALE_KEY, 0) or 0)


def notes(ledger: Ledger) -> list[Action]:
    """Pinned notes, oldest first."""
    return [a for a in actions(ledger) if a.action == "note"]


# -- helpers ------------------------------------------------------------------------------


def _vetoable(ledger: Ledger, experiment_id: int) -> Experiment:
    try:
        exp = ledger.experiment(experiment_id)
    except RsilabError:
        raise ControlError(f"no experiment #{experiment_id}") from None
    if exp.kind == "baseline":
        raise ControlError(f"#{experiment_id} is the baseline: there is nothing to revert to")
    if exp.status != Verdict.KEEP:
        raise ControlError(f"#{experiment_id} is {exp.status}, not kept: nothing to veto")
    return exp


def _experiment_id(value: Any) -> int:
    try:
        return int(str(value).strip().lstrip("#"))
    except ValueError:
        raise ControlError(f"experiment must be an id, not {value!r}") from None


def _text(value: Any, what: str, *, required: bool = True) -> str:
    text = "" if value is None else str(value).strip()
    if required and not text:
        raise ControlError(f"the {what} is empty")
    if len(text) > MAX_TEXT:
        raise ControlError(f"the {what} is longer than {MAX_TEXT} characters")
    return text


def _looks_like_diff(text: str) -> bool:
    return bool(re.search(r"^--- .*\n\+\+\+ ", text, re.M))


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.lstrip("#").strip()
        if line and not line.startswith(("diff ", "--- ", "+++ ", "index ")):
            return line[:200]
    return "idea"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "idea"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml(value: Any) -> str:
    """A TOML value for the simple types knobs have (JSON strings are valid TOML strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise ControlError(f"knob value {value!r}: use a number, a string, a boolean or a list")
