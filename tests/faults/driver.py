"""Fault injection: SIGKILL `dvc repro` while a stage runs, then check the disk, rerun and compare.

One kill, in order:

1. make the stage run again: ``dvc repro --single-item --force <stage>``; a training stage's persistent
   checkpoints folder is removed first, as when retraining from scratch, so that there is training to cut;
2. start it in its own process group and kill the whole group with SIGKILL when the trigger fires:
   ``delay``: a seeded-random delay in [0, DVC start-up + the stage's duration in the reference run];
   ``write``: the k-th new file or folder seen beside or inside one of the stage's outputs (k in 1..3): with
   atomic writes that is a temporary, without them the output itself, half-written;
   ``checkpoint`` (training stages): ``last.pt`` has appeared, plus a seeded delay of up to 0.5 s;
   ``after-command``: up to 0.3 s after the stage command exited, while DVC hashes and caches outputs;
   ``lock``: up to 50 ms after DVC logged "Updating lock file", while it rewrites dvc.lock;
3. check every output of the pipeline (:func:`tests.faults.checks.inspect`): each file reads back whole,
   an all-or-nothing output holds exactly the files of the reference run;
4. rerun as a user would and require it to complete: in a seeded three quarters of the kills the killed
   command again, then ``dvc repro``; otherwise ``dvc repro`` alone, where DVC restores a non-persistent
   stage's last complete outputs from its cache instead of running it (dvc.lock still describes that run);
   a training stage cut after a checkpoint must say that it resumed from it;
5. check again, require that DVC recorded no temporary as part of an output, that every model equals the
   reference run's bit for bit (CPU, ``common.deterministic: true``) and that ``dvc status`` is clean.

DVC after a SIGKILL: ``.dvc/tmp/rwlock`` still names the killed process; DVC 3 notices that the PID is gone,
says "had been killed. Auto removed it from the lock file." and goes on, so nothing is needed in the normal
case. A user would delete ``.dvc/tmp/rwlock`` when DVC cannot read it (killed while writing it) or names a
live PID; the driver does the same, once, and reports it. ``.dvc/tmp/lock`` is an fcntl lock that dies
with its process. DVC rewrites ``dvc.lock`` in place, so a kill while it does leaves it empty or cut:
every later ``dvc`` command fails ("'./dvc.lock' validation failed"), or, where the cut still parses as
YAML, DVC silently reruns the stages whose entries it lost; the driver reports either as a DVC
finding, not a violation of the project's guarantees, and restores it as a user would:
``git checkout -- dvc.lock`` (with ``core.autostage`` git's index holds the last complete one). The stage
that was running is read from DVC's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.checks import (
    Output,
    Report,
    files_of,
    inspect,
    lockfile_problem,
    pipeline_outputs,
    recorded_temps,
)
from tests.faults.project import fault_params, make_project, tool_env

UP_TO_DATE = "Data and pipelines are up to date"
STALE_PID = "had been killed. Auto removed it from the lock file"
LOCK_TROUBLE = ("RWLock-file", "is busy, it is being blocked by", "Unable to acquire lock")
RUNNING = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")
POLL_S = 0.002
PHASES = {"start-up": "DVC start-up", "stage": "stage command", "bookkeeping": "DVC after the command"}


@dataclass(frozen=True)
class Planned:
    """One kill: the stage to rerun, the trigger and its seeded draw (``delay``: fraction of the stage's
    typical duration; ``write``: which new file or folder, 1-based; ``checkpoint``: seconds after ``last.pt``
    appeared; ``after-command``: seconds after the stage command exited; ``lock``: seconds after DVC said
    it updates dvc.lock), and whether the user repeats the
    killed command before ``dvc repro`` (``repeat``; otherwise DVC restores the stage's outputs of its
    last complete run from the cache, as dvc.lock still describes that run)."""

    stage: str
    trigger: str
    draw: float
    repeat: bool = True


@dataclass
class KillResult:
    index: int
    planned: Planned
    delay_s: float | None = None  # seconds after `dvc repro` started when the group was killed
    killed: bool = False  # False: the run ended before the trigger fired
    running: str = ""  # the stage DVC had started last ("" before any)
    phase: str = ""  # "start-up" (no stage yet), "stage" (its command running), "bookkeeping" (DVC after it)
    found: str = ""  # what the stage's outputs looked like after the kill
    rerun_ok: bool = False
    rerun_s: float = 0.0
    ran: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # checked out from DVC's cache instead of run
    resumed: str = ""
    violations: list[str] = field(default_factory=list)
    dvc_findings: list[str] = field(default_factory=list)  # DVC's own state broken by the kill
    notes: list[str] = field(default_factory=list)


@dataclass
class Summary:
    seed: int
    reference_s: float
    durations: dict[str, float]
    results: list[KillResult]
    wall_s: float = 0.0

    @property
    def violations(self) -> list[str]:
        return [f"kill {r.index} ({r.planned.stage}): {v}" for r in self.results for v in r.violations]

    def lines(self) -> list[str]:
        killed = [r for r in self.results if r.killed]
        per_stage = Counter(r.planned.stage for r in killed)
        per_trigger = Counter(r.planned.trigger for r in killed)
        phases = Counter(r.phase for r in killed)
        resumed = [r for r in self.results if r.resumed]
        out = [
            f"seed {self.seed}: {len(killed)} of {len(self.results)} planned kills landed "
            f"({len(self.results) - len(killed)} runs finished first); wall {self.wall_s:.0f} s "
            f"(reference run {self.reference_s:.0f} s)",
            "kills per stage: " + ", ".join(f"{s} {n}" for s, n in sorted(per_stage.items())),
            "kills per trigger: " + ", ".join(f"{t} {n}" for t, n in sorted(per_trigger.items())),
            "killed during: " + ", ".join(f"{PHASES[p]} {n}" for p, n in sorted(phases.items())),
            f"reruns completed: {sum(r.rerun_ok for r in self.results)} of {len(self.results)} "
            f"({sum(r.planned.repeat for r in self.results)} repeating the killed command first); the stage "
            f"ran again in {sum(r.planned.stage in r.ran for r in self.results)}, was restored from DVC's "
            f"cache in {sum(r.planned.stage in r.restored for r in self.results)}; "
            f"resumed from a checkpoint: {len(resumed)} "
            f"({sum('mid-training' in r.resumed for r in resumed)} of them mid-training)",
            f"DVC's own files broken by a kill (recovered as a user would, see the notes): "
            f"{sum(bool(r.dvc_findings) for r in self.results)}",
            *[f"  kill {r.index} ({r.planned.stage}): {f}" for r in self.results for f in r.dvc_findings],
            f"violations: {len(self.violations)}",
            *[f"  {v}" for v in self.violations],
        ]
        return out


# ----------------------------------------------------------------------------------------- processes
def dvc(root: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _group_alive(pgid: int) -> bool:
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group led by ``proc`` and wait until none of it runs any more."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"process group {proc.pid} survived SIGKILL")
        time.sleep(0.05)


def timed_repro(root: Path, targets: Sequence[str]) -> tuple[float, dict[str, float], str]:
    """Run ``dvc repro`` streaming its log: (DVC start-up seconds, seconds per stage, log)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", *targets],
        cwd=root,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    marks: list[tuple[float, str | None]] = []
    log = []
    for line in proc.stdout:
        log.append(line)
        match = RUNNING.search(line)
        if match:
            marks.append((time.monotonic() - t0, match.group(1)))
    marks.append((time.monotonic() - t0, None))
    text = "".join(log)
    if proc.wait() != 0:
        raise RuntimeError(f"reference `dvc repro` failed:\n{text}")
    durations = {name: marks[i + 1][0] - t for i, (t, name) in enumerate(marks[:-1]) if name}
    return marks[0][0], durations, text


# ----------------------------------------------------------------------------------------- the plan
def plan_kills(seed: int, stages: Sequence[str], trainers: Sequence[str], n: int) -> list[Planned]:
    """``n`` kills drawn from ``seed`` alone: the stages in shuffled rounds, so each is hit about equally
    often; a trigger and its draw per kill. The same seed and stage list give the same plan."""
    rng = random.Random(seed)
    order: list[str] = []
    while len(order) < n:
        round_ = list(stages)
        rng.shuffle(round_)
        order += round_
    plan = []
    for stage in order[:n]:
        triggers = ["delay", "delay", "delay", "write", "after-command", "lock"]
        if stage in trainers:
            triggers += ["checkpoint", "checkpoint"]
        trigger = rng.choice(triggers)
        draw = {
            "delay": rng.random(),
            "write": float(rng.randint(1, 3)),
            "checkpoint": rng.uniform(0.0, 0.5),
            "after-command": rng.uniform(0.0, 0.3),
            "lock": rng.uniform(0.0, 0.05),
        }[trigger]
        plan.append(Planned(stage, trigger, draw, repeat=rng.random() < 0.75))
    return plan


# ----------------------------------------------------------------------------------------- one kill
class _Trigger:
    """Decides, polled every few milliseconds, when to kill (see :class:`Planned`)."""

    def __init__(
        self, planned: Planned, budget_s: float, watched: Sequence[Path], last_pt: Path | None, log: Path
    ) -> None:
        self.planned = planned
        self.log = log
        self.fire_at: float | None = planned.draw * budget_s if planned.trigger == "delay" else None
        self.watched = watched
        self.last_pt = last_pt
        self.seen: set[tuple[str, int]] = set()
        _entries(watched, self.seen)
        self.before = set(self.seen)  # what is already there is not this run's writing
        self.command = f"stages.{planned.stage.split('@')[0]}"
        self.command_seen = False

    def _command_running(self, pid: int) -> bool:
        import psutil

        try:
            kids = psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return False
        for kid in kids:
            try:
                if kid.status() != psutil.STATUS_ZOMBIE and self.command in " ".join(kid.cmdline()):
                    return True
            except psutil.Error:
                continue
        return False

    def due(self, now: float, pid: int) -> bool:
        trigger = self.planned.trigger
        if self.fire_at is None:
            if trigger == "write":
                _entries(self.watched, self.seen)
                if len(self.seen - self.before) >= self.planned.draw:
                    self.fire_at = now
            elif trigger == "checkpoint" and self.last_pt is not None and self.last_pt.exists():
                self.fire_at = now + self.planned.draw
            elif trigger == "after-command":
                running = self._command_running(pid)
                if self.command_seen and not running:
                    self.fire_at = now + self.planned.draw
                self.command_seen |= running
            elif trigger == "lock" and "Updating lock file" in self.log.read_text(errors="replace"):
                self.fire_at = now + self.planned.draw
        return self.fire_at is not None and now >= self.fire_at


def _entries(dirs: Sequence[Path], seen: set[tuple[str, int]]) -> None:
    """Add (path, inode) of every file and folder under ``dirs``: a write shows as a new pair (a new name, or
    an old name on a new inode: rewritten, renamed into place or recreated after DVC removed it)."""
    for top in dirs:
        stack = [top]
        while stack:
            try:
                with os.scandir(stack.pop()) as it:
                    for entry in it:
                        seen.add((entry.path, entry.inode()))
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
            except (FileNotFoundError, NotADirectoryError):
                continue


def _phase(log: str) -> tuple[str, str]:
    """(stage DVC started last, phase) from a DVC log."""
    stages = RUNNING.findall(log)
    if not stages:
        return "", "start-up"
    tail = log[log.rfind(f"Running stage '{stages[-1]}'") :]
    return stages[-1], "bookkeeping" if "Updating lock file" in tail else "stage"


def _checkpoint_epoch(path: Path) -> int | None:
    from pipeline.errors import InputDataError
    from pipeline.training.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path).epoch
    except InputDataError:
        return None


class Driver:
    """Kills, checks and reruns in one project folder (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        targets: Sequence[str] = (),
        log: Callable[[str], None] = print,
    ) -> None:
        self.root = root
        self.targets = list(targets)
        self.log = log
        self.outputs: list[Output] = []
        self.complete: dict[str, list[str]] = {}
        self.reference: dict[str, dict[str, dict[str, Any]]] = {}
        self.startup_s = 0.0
        self.durations: dict[str, float] = {}
        self.reference_s = 0.0

    # -------------------------------------------------------------------------------------- reference
    @property
    def stages(self) -> list[str]:
        return list(self.durations)

    @property
    def trainers(self) -> dict[str, Path]:
        """Training stages (those with a persistent output) and their checkpoints folder."""
        return {o.stage: self.root / o.path for o in self.outputs if o.persist and o.stage in self.durations}

    def run_reference(self) -> None:
        """An uninterrupted ``dvc repro``: stage durations, complete file lists and reference weights."""
        from pipeline.training.checkpoint import load_weights

        t0 = time.monotonic()
        self.startup_s, self.durations, _ = timed_repro(self.root, self.targets)
        self.reference_s = time.monotonic() - t0
        self.outputs = [o for o in pipeline_outputs(self.root) if o.stage in self.durations]
        self.complete = {o.path: files_of(self.root / o.path) for o in self.outputs if o.whole}
        self.reference = {
            stage: load_weights(folder / "model.pt")[0] for stage, folder in self.trainers.items()
        }
        report = inspect(self.root, self.outputs, self.complete)
        if report.violations or report.missing:
            raise RuntimeError(f"the reference run is not clean: {report.violations + report.missing}")

    # ---------------------------------------------------------------------------------------- killing
    def _watched(self, stage: str) -> list[Path]:
        dirs = set()
        for out in self.outputs:
            if out.stage == stage:
                dirs.add((self.root / out.path).parent)
        return sorted(dirs)

    def kill_once(self, index: int, planned: Planned) -> KillResult:
        res = KillResult(index, planned)
        stage = planned.stage
        folder = self.trainers.get(stage)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        logfile = self.root.parent / f"kill-{index:03d}.log"
        budget = self.startup_s + self.durations[stage]
        last_pt = folder / "last.pt" if folder else None
        trigger = _Trigger(planned, budget, self._watched(stage), last_pt, logfile)
        with logfile.open("w") as fh:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "dvc", "repro", "--single-item", "--force", stage],
                cwd=self.root,
                env={**tool_env(), "PYTHONUNBUFFERED": "1"},  # the log shows how far it got
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the stage command is killed with it
            )
            while proc.poll() is None:
                now = time.monotonic() - t0
                if trigger.due(now, proc.pid):
                    _kill_group(proc)
                    res.killed, res.delay_s = True, now
                    break
                if now > 1800:
                    _kill_group(proc)
                    res.violations.append("the killed run did not end within 30 min")
                    break
                time.sleep(POLL_S)
        text = logfile.read_text(errors="replace")
        if not res.killed and proc.returncode != 0:
            res.violations.append(f"`dvc repro -s -f {stage}` failed on its own:\n{text[-2000:]}")
        res.running, res.phase = _phase(text)
        if res.killed and planned.trigger == "after-command":
            res.phase = "bookkeeping"  # the command had exited; DVC logs nothing until it writes dvc.lock

        after = inspect(self.root, self.outputs, self.complete)
        res.violations += [f"after the kill: {v}" for v in after.violations]
        res.found = self._describe(stage, after)
        self._recover_dvc_state(res)
        epoch = _checkpoint_epoch(folder / "last.pt") if folder and (folder / "last.pt").exists() else None

        self._rerun(res, stage, folder, epoch)
        return res

    def _describe(self, stage: str, report: Report) -> str:
        parts = []
        for out in (o for o in self.outputs if o.stage == stage):
            path = self.root / out.path
            if not path.exists():
                parts.append(f"{out.path} absent")
            elif out.whole:
                whole = files_of(path) == self.complete.get(out.path)
                parts.append(f"{out.path} {'complete' if whole else 'INCOMPLETE'}")
            elif path.is_dir():
                names = files_of(path)
                if out.persist:
                    have = [n for n in ("last.pt", "best.pt", "model.pt") if n in names]
                    epoch = _checkpoint_epoch(path / "last.pt") if "last.pt" in names else None
                    ckpt = f", last.pt epoch {epoch + 1}" if epoch is not None else ""
                    parts.append(f"{out.path} {len(names)} files ({'+'.join(have) or 'no .pt'}{ckpt})")
                else:
                    parts.append(f"{out.path} {len(names)} files")
            else:
                parts.append(f"{out.path} present")
        if report.temps:
            more = ", ..." if len(report.temps) > 2 else ""
            parts.append(f"{len(report.temps)} temporaries ({', '.join(report.temps[:2])}{more})")
        return "; ".join(parts)

    def _recover_dvc_state(self, res: KillResult) -> None:
        """DVC rewrites dvc.lock in place (``open(path, "w+")`` then a YAML dump, in
        ``dvc/utils/serialize/_common.py``), so a kill in that window leaves it empty or cut: then every
        later ``dvc`` command fails on it, or, where the cut still parses, DVC silently takes the lost or cut
        entries as changed stages and reruns them. With ``core.autostage`` (this project's .dvc/config)
        git's index holds the lock file of the last command that completed: a user restores it with
        ``git checkout``."""
        rwlock = self.root / ".dvc" / "tmp" / "rwlock"
        try:
            json.loads(rwlock.read_text() if rwlock.exists() else "{}")
        except ValueError:  # DVC writes it in place too; it then refuses to run: "Unable to read RWLock-file"
            res.dvc_findings.append(".dvc/tmp/rwlock cut short by the kill")
            rwlock.unlink()
            res.notes.append("removed the unreadable .dvc/tmp/rwlock")
        problem = lockfile_problem(self.root, self.stages)
        if problem is None:
            return
        res.dvc_findings.append(f"dvc.lock cut short by the kill ({problem})")
        subprocess.run(["git", "checkout", "--", "dvc.lock"], cwd=self.root, check=True, capture_output=True)
        again = lockfile_problem(self.root, self.stages)
        if again is not None:
            res.violations.append(f"dvc.lock from git's index is no good either ({again})")
        res.notes.append("restored dvc.lock from git's index: `git checkout -- dvc.lock`")

    # ---------------------------------------------------------------------------------------- rerun
    def _rerun(self, res: KillResult, stage: str, folder: Path | None, epoch: int | None) -> None:
        t0 = time.monotonic()
        commands = [["repro", *self.targets]]
        if res.planned.repeat:
            commands.insert(0, ["repro", "--single-item", "--force", stage])
        text = ""
        for args in commands:
            proc = dvc(self.root, *args)
            text += proc.stdout + proc.stderr
            if proc.returncode != 0 and any(s in text for s in LOCK_TROUBLE):
                res.dvc_findings.append("DVC would not run for its lock files")
                res.notes.append("removed .dvc/tmp/rwlock by hand, as DVC's message says")
                (self.root / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)
                proc = dvc(self.root, *args)
                text += proc.stdout + proc.stderr
            if proc.returncode != 0:
                break
        res.rerun_s = time.monotonic() - t0
        res.rerun_ok = proc.returncode == 0
        res.ran, res.restored = RUNNING.findall(text), RESTORED.findall(text)
        (self.root.parent / f"kill-{res.index:03d}-rerun.log").write_text(text)
        if STALE_PID in text:
            res.notes.append("DVC dropped the killed PID from .dvc/tmp/rwlock by itself")
        if not res.rerun_ok:
            res.violations.append(f"`dvc {' '.join(args)}` after the kill failed:\n{text[-3000:]}")
            return

        if folder is not None and stage in res.ran:
            rel = (folder / "last.pt").relative_to(self.root).as_posix()
            said = re.search(
                rf"resumed from {re.escape(rel)}: epoch (\d+)(?: of \d+)? done(, continuing)?", text
            )
            if said:
                res.resumed = (
                    f"epoch {said.group(1)} ({'mid-training' if said.group(2) else 'training was done'})"
                )
            if epoch is not None and not (said and int(said.group(1)) == epoch + 1):
                res.violations.append(
                    f"{rel} held epoch {epoch + 1} after the kill but the rerun did not resume from it"
                )
            if epoch is None and said:
                res.violations.append(f"the rerun says it resumed from {rel}, which did not exist")

        after = inspect(self.root, self.outputs, self.complete)
        res.violations += [f"after the rerun: {v}" for v in after.violations]
        res.violations += [f"after the rerun: {m} missing" for m in after.missing]
        lock = lockfile_problem(self.root, self.stages)
        if lock is not None:
            res.violations.append(f"after the rerun: dvc.lock: {lock}")
        res.violations += [f"DVC recorded a temporary as output: {t}" for t in recorded_temps(self.root)]
        if after.temps:
            res.notes.append(f"left beside/inside outputs (ignored by .dvcignore): {', '.join(after.temps)}")
        res.violations += self._compare_weights()
        status = dvc(self.root, "status", *self.targets)
        if UP_TO_DATE not in status.stdout:
            res.violations.append(f"`dvc status` is not clean:\n{status.stdout}{status.stderr}")

    def _compare_weights(self) -> list[str]:
        import torch

        from pipeline.training.checkpoint import load_weights

        problems = []
        for stage, folder in self.trainers.items():
            states = load_weights(folder / "model.pt")[0]
            ref = self.reference[stage]
            for module, tensors in ref.items():
                got = states.get(module, {})
                if set(got) != set(tensors) or not all(torch.equal(got[k], v) for k, v in tensors.items()):
                    problems.append(f"{stage}: {module} weights differ from the uninterrupted run")
        return problems

    # ------------------------------------------------------------------------------------------ all
    def run(self, plan: Sequence[Planned], seed: int) -> Summary:
        t0 = time.monotonic()
        results = []
        for index, planned in enumerate(plan, start=1):
            res = self.kill_once(index, planned)
            results.append(res)
            self.log(format_result(res, self.startup_s + self.durations[planned.stage]))
        summary = Summary(seed, self.reference_s, dict(self.durations), results)
        summary.wall_s = time.monotonic() - t0 + self.reference_s
        return summary


def format_result(res: KillResult, budget: float) -> str:
    p = res.planned
    how = {
        "delay": f"delay {p.draw * budget:.2f} s (u={p.draw:.3f} of {budget:.1f} s)",
        "write": f"at new file #{int(p.draw)}",
        "checkpoint": f"{p.draw:.2f} s after last.pt appeared",
        "after-command": f"{p.draw:.2f} s after the stage command exited",
        "lock": f"{p.draw:.3f} s after DVC said it updates dvc.lock",
    }[p.trigger]
    when = f"killed at {res.delay_s:.2f} s" if res.killed else "finished before the trigger"
    where = f"{res.running or '-'} ({PHASES[res.phase]})"
    lines = [
        f"[{res.index:3d}] {p.stage:24s} {p.trigger:10s} {how}; {when}; running: {where}",
        f"      on disk: {res.found}",
        f"      rerun ({'same command, then ' if p.repeat else ''}dvc repro): "
        f"{'completed' if res.rerun_ok else 'FAILED'} in {res.rerun_s:.1f} s, ran "
        f"{', '.join(res.ran) or 'nothing'}"
        + (f", restored {', '.join(res.restored)} from DVC's cache" if res.restored else "")
        + (f"; resumed at {res.resumed}" if res.resumed else ""),
    ]
    lines += [f"      DVC: {f}" for f in res.dvc_findings]
    lines += [f"      note: {n}" for n in res.notes]
    lines += [f"      VIOLATION: {v}" for v in res.violations]
    return "\n".join(lines)


def run_faults(
    workdir: Path,
    kills: int,
    seed: int,
    *,
    targets: Sequence[str] = (),
    stages: Sequence[str] | None = None,
    plan: Sequence[Planned] | None = None,
    epochs: int = 3,
    log: Callable[[str], None] = print,
) -> Summary:
    """Build a tiny project under ``workdir``, run it once uninterrupted, then kill ``kills`` times
    (``plan`` overrides the seeded plan; ``stages`` limits which stages are killed)."""
    root = make_project(workdir / "project", fault_params(epochs))
    driver = Driver(root, targets, log)
    driver.run_reference()
    log(
        f"reference `dvc repro {' '.join(targets)}`: {driver.reference_s:.1f} s (DVC start-up "
        f"{driver.startup_s:.1f} s); " + ", ".join(f"{s} {d:.1f} s" for s, d in driver.durations.items())
    )
    if plan is None:
        chosen = [s for s in driver.stages if stages is None or s in stages]
        plan = plan_kills(seed, chosen, list(driver.trainers), kills)
    return driver.run(plan, seed)
