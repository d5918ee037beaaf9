"""A small pool of persistent worker processes, each running one case at a time under a wall-clock limit.

Workers are plain subprocesses (``python -m tests.fuzz.worker``) fed JSON lines over a pipe: no fork of a
parent that holds the corpus, and a worker that hangs, crashes or is killed is simply replaced. The parent
owns the clock: a case that has not answered within ``timeout_s`` gets its worker killed (SIGKILL, so that a
hang in C code ends too) and is reported as a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120.0


@dataclass
class Result:
    case: Any
    outcome: str  # read | rejected | failure
    failure: str | None  # exception | wrong_result | memory | phi_leak | timeout | crash
    detail: str
    elapsed: float  # wall seconds seen by the parent, request sent → answer read
    peak_rss: int  # bytes, the worker's peak during this case (0 when it died)
    codes: list[str] = field(default_factory=list)
    worker_pid: int = 0
    reasons: list[str] = field(default_factory=list)


class _Worker:
    def __init__(self, slot: int, budget: int, log_dir: Path) -> None:
        env = dict(os.environ)
        # One thread per worker: the pool is the parallelism, and every thread's arena costs address space.
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.log_path = log_dir / f"worker{slot}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.worker", str(budget)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=REPO_ROOT,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.slot = slot
        self.buf = b""
        self.info: dict[str, Any] | None = None  # the ready message
        self.case: Any = None
        self.sent_at = 0.0
        self.deadline = time.monotonic() + STARTUP_TIMEOUT_S

    @property
    def fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def send(self, case: Any, request: dict[str, Any], timeout_s: float) -> None:
        assert self.proc.stdin is not None
        self.case = case
        self.sent_at = time.monotonic()
        self.deadline = self.sent_at + timeout_s
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def read(self) -> list[dict[str, Any]] | None:
        """Complete messages available now; None at end of file (the worker died)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.log.close()

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


class WorkerPool:
    """``run(cases)`` yields one :class:`Result` per case, in completion order.

    ``request_of(case)`` gives the JSON-able request (without ``id``); the pool adds the id. ``budget`` is the
    address space a case may add to the worker's post-import baseline (RLIMIT_AS).
    """

    def __init__(self, workers: int, log_dir: Path, timeout_s: float = 5.0, budget: int = 1 << 30) -> None:
        self.n = workers
        self.timeout_s = timeout_s
        self.budget = budget
        self.log_dir = log_dir
        self.baselines: list[dict[str, Any]] = []  # one ready message per worker started
        self.respawns = 0

    def run(self, cases: Iterable[Any], request_of: Callable[[Any], dict[str, Any]]) -> Iterator[Result]:
        pending = iter(cases)
        exhausted = False
        sel = selectors.DefaultSelector()
        workers: list[_Worker] = []
        startup_failures = 0

        def spawn(slot: int) -> _Worker:
            w = _Worker(slot, self.budget, self.log_dir)
            sel.register(w.fd, selectors.EVENT_READ, w)
            return w

        def replace(w: _Worker) -> _Worker:
            sel.unregister(w.fd)
            w.kill()
            self.respawns += 1
            new = spawn(w.slot)
            workers[workers.index(w)] = new
            return new

        try:
            for slot in range(self.n):
                workers.append(spawn(slot))
            seq = 0
            while True:
                for w in list(workers):
                    if w.info is not None and w.case is None and not exhausted:
                        try:
                            case = next(pending)
                        except StopIteration:
                            exhausted = True
                            break
                        request = dict(request_of(case), id=seq)
                        seq += 1
                        w.send(case, request, self.timeout_s)
                if exhausted and all(w.case is None for w in workers):
                    return
                now = time.monotonic()
                wait = max(0.0, min(w.deadline for w in workers) - now)
                for key, _ in sel.select(timeout=min(wait, 1.0)):
                    w = key.data
                    messages = w.read()
                    if messages is None:  # the worker died
                        case, elapsed = w.case, time.monotonic() - w.sent_at
                        code = w.proc.wait()
                        tail = w.log_tail()
                        replace(w)
                        if case is None:
                            startup_failures += 1
                            if startup_failures > 3:
                                raise RuntimeError(f"fuzz worker does not start (exit {code}):\n{tail}")
                            continue
                        name = signal.Signals(-code).name if code < 0 else f"exit status {code}"
                        detail = f"worker died ({name})\n{tail}"
                        yield Result(case, "failure", "crash", detail, elapsed, 0, worker_pid=w.proc.pid)
                        continue
                    for msg in messages:
                        if msg.get("ready"):
                            w.info = msg
                            self.baselines.append(msg)
                            continue
                        case, w.case = w.case, None
                        w.deadline = time.monotonic() + 3600.0  # idle until the next case
                        yield Result(
                            case,
                            msg["outcome"],
                            msg.get("failure"),
                            msg.get("detail", ""),
                            time.monotonic() - w.sent_at,
                            int(msg.get("peak_rss", 0)),
                            list(msg.get("codes", [])),
                            w.proc.pid,
                            list(msg.get("reasons", [])),
                        )
                now = time.monotonic()
                for w in list(workers):
                    if now < w.deadline:
                        continue
                    if w.case is None:
                        if w.info is None:
                            raise RuntimeError(f"fuzz worker not ready after {STARTUP_TIMEOUT_S:.0f} s")
                        w.deadline = now + 3600.0  # idle
                        continue
                    case, elapsed, pid = w.case, now - w.sent_at, w.proc.pid
                    replace(w)
                    detail = f"no answer within {self.timeout_s:g} s"
                    yield Result(case, "failure", "timeout", detail, elapsed, 0, worker_pid=pid)
        finally:
            for w in workers:
                w.kill()
            sel.close()
