"""The training engine on a toy task: determinism, exact resume, checkpoints, DVCLive, kill, DDP on CPU."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.training.checkpoint import load_checkpoint, load_weights
from pipeline.training.engine import FitConfig, first_dim, fit, move_to_device
from tests.conftest import REPO_ROOT
from tests.unit.training.toy import build, config, run

PERF = ("perf/",)


def weights(out: Path) -> dict[str, torch.Tensor]:
    states, _ = load_weights(out / "final.pt")
    return states["net"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def no_perf(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if not k.startswith(PERF)} for h in history]


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    first = run(tmp_path / "a", 2)
    second = run(tmp_path / "b", 2)
    assert_identical(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert no_perf(first.history) == no_perf(second.history)
    assert first.device == "cpu" and first.precision_used == "fp32"  # bf16 asked, CPU runs fp32
    assert first.images_per_second > 0 and 0.0 <= first.data_wait_fraction <= 1.0


@pytest.mark.parametrize(("sampler", "workers"), [("distributed", 0), ("random", 0), ("distributed", 2)])
def test_resume_is_bit_identical(tmp_path: Path, sampler: str, workers: int) -> None:
    full = run(tmp_path / "full", 4, sampler=sampler, workers=workers)
    part = run(tmp_path / "resumed", 2, sampler=sampler, workers=workers)
    assert part.epochs_run == 2 and part.resumed_from_epoch is None
    rest = run(tmp_path / "resumed", 4, sampler=sampler, workers=workers)
    assert rest.resumed_from_epoch == 1 and rest.epochs_run == 2
    assert_identical(weights(tmp_path / "full"), weights(tmp_path / "resumed"))
    assert no_perf(rest.history) == no_perf(full.history)
    assert [h["epoch"] for h in rest.history] == [0, 1, 2, 3]
    assert rest.history[-1]["step"] == 16  # 4 batches x 4 epochs, counted across the resume
    assert (rest.best_epoch, rest.best_metric) == (full.best_epoch, full.best_metric)
    ckpt = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert (
        ckpt.epoch == 3 and ckpt.global_step == 16 and ckpt.extra == {"steps_seen": 16}
    )  # restored, then counted on


def test_rerun_after_completion_trains_nothing(tmp_path: Path) -> None:
    first = run(tmp_path, 2)
    again = run(tmp_path, 2)
    assert again.epochs_run == 0 and again.resumed_from_epoch == 1
    assert no_perf(again.history) == no_perf(first.history)
    assert again.images_per_second > 0


def test_run_key_mismatch_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(tmp_path / "ref", 2)
    task, train, val = build()
    fit(task, train, val, config(2, run_key="other"), tmp_path / "out")
    task, train, val = build()
    with caplog.at_level(logging.WARNING):
        result = fit(task, train, val, config(3), tmp_path / "out")
    assert result.resumed_from_epoch is None and result.epochs_run == 3
    assert "run key" in caplog.text
    assert load_checkpoint(tmp_path / "out" / "last.pt").run_key == "k1"


def test_truncated_checkpoint_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(tmp_path / "ref", 2)
    out = tmp_path / "out"
    run(out, 1)
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        result = run(out, 2)
    assert result.resumed_from_epoch is None and result.epochs_run == 2
    assert "starting fresh" in caplog.text
    assert_identical(weights(tmp_path / "ref"), weights(out))


def test_best_checkpoint_follows_the_monitor(tmp_path: Path) -> None:
    result = run(tmp_path, 4)
    mses = [h["val/mse"] for h in result.history]
    assert result.best_metric == min(mses) and result.best_epoch == mses.index(min(mses))
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.epoch == result.best_epoch
    states, meta = load_weights(tmp_path / "best.pt")
    assert meta["epoch"] == result.best_epoch and set(states) == {"net"}
    raw = torch.load(tmp_path / "last.pt", weights_only=True)  # only safe types inside
    assert raw["format_version"] == 1 and raw["run_key"] == "k1"


def test_best_is_repaired_when_killed_between_writes(tmp_path: Path) -> None:
    run(tmp_path, 1)  # epoch 0 is the best so far: last.pt and best.pt both hold it
    (tmp_path / "best.pt").unlink()  # as if killed after last.pt, before best.pt
    run(tmp_path, 2)
    assert (tmp_path / "best.pt").exists()


def test_unknown_monitor_is_a_config_error(tmp_path: Path) -> None:
    task, train, val = build()
    cfg = FitConfig(
        epochs=1, checkpoint_every=1, monitor="dice", monitor_mode="max", seed=1, deterministic=True,
        device="cpu", precision="fp32",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="dice"):
        fit(task, train, val, cfg, tmp_path)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ConfigError):
        config(0)
    with pytest.raises(ConfigError):
        FitConfig(
            epochs=1, checkpoint_every=1, monitor="", monitor_mode="up", seed=1,  # type: ignore[arg-type]
            deterministic=True, device="cpu", precision="fp32",
        )  # fmt: skip


def test_max_steps_per_epoch_and_no_validation(tmp_path: Path) -> None:
    task, train, _ = build()
    cfg = FitConfig(
        epochs=2, checkpoint_every=5, monitor="loss", monitor_mode="min", seed=3, deterministic=False,
        device="auto", precision="fp32", max_steps_per_epoch=3,
    )  # fmt: skip
    result = fit(task, train, None, cfg, tmp_path)
    assert [h["step"] for h in result.history] == [3, 6]
    assert not any(k.startswith("val/") for k in result.last_metrics)
    assert load_checkpoint(tmp_path / "last.pt").epoch == 1  # written at the end despite checkpoint_every=5


def test_move_to_device_and_batch_size() -> None:
    batch = {"image": torch.zeros(3, 1, 4, 4), "meta": [torch.ones(3), "id"], "pair": (torch.ones(2), 5)}
    moved = move_to_device(batch, torch.device("cpu"))
    assert moved["meta"][1] == "id" and isinstance(moved["pair"], tuple)
    assert first_dim(batch) == 3 and first_dim({"x": "no tensors"}) == 0


# ---------------------------------------------------------------------------------------------- DVCLive
def tsv_steps(path: Path) -> list[str]:
    header, *rows = (line.split("\t") for line in path.read_text().splitlines())
    return [row[header.index("step")] for row in rows]


@pytest.mark.parametrize("first_epochs", [1, 2])
def test_dvclive_logs_and_continues_on_resume(tmp_path: Path, first_epochs: int) -> None:
    live = tmp_path / "live"
    run(tmp_path / "out", first_epochs, live=live)
    run(tmp_path / "out", 4, live=live)
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == 3 and "mse" in metrics["val"] and "loss" in metrics["train"]
    steps = tsv_steps(live / "plots" / "metrics" / "train" / "loss.tsv")
    assert steps == ["0", "1", "2", "3"]  # one row per epoch, no step repeated
    assert (live / "plots" / "metrics" / "val" / "mse.tsv").exists()
    assert (live / "plots" / "metrics" / "perf" / "images_per_second.tsv").exists()
    assert (live / "plots" / "images" / "pred.png").stat().st_size > 0
    assert not (live / "dvc.yaml").exists()


def test_dvclive_files_are_whole_whenever_a_kill_could_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DVCLive opens a TSV (creating it empty) and fills it on close; the live folder is a stage output, so a
    kill between the two must not leave an empty file there (found by `python -m tests.faults --seed 1`)."""
    from dvclive.plots import metric

    live = tmp_path / "live"
    dump = metric.Metric.dump
    cut: list[str] = []

    def dump_and_look(self: metric.Metric, val: float, **kwargs: object) -> None:
        new = not self.output_path.exists()
        self.output_path.touch()  # what DVCLive's open(..., "a") does before it writes: a kill here
        cut.extend(p.name for p in live.rglob("*") if p.is_file() and p.stat().st_size == 0)
        if new:
            self.output_path.unlink()  # DVCLive writes the header only into a file it creates
        dump(self, val, **kwargs)

    monkeypatch.setattr(metric.Metric, "dump", dump_and_look)
    run(tmp_path / "out", 2, live=live)
    run(tmp_path / "out", 3, live=live)  # resumed: DVCLive refilled from the checkpoint
    assert not cut, f"empty files in the live folder while DVCLive wrote: {sorted(set(cut))}"
    assert tsv_steps(live / "plots" / "metrics" / "train" / "loss.tsv") == ["0", "1", "2"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "staging folder removed"


# ------------------------------------------------------------------------------------ real processes
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _toy(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.unit.training.toy", "--out", str(out), *args]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    env = _env()
    reference = subprocess.run(
        _toy(tmp_path / "ref", "--epochs", "4"), env=env, capture_output=True, text=True
    )
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    slow = subprocess.Popen(
        _toy(out, "--epochs", "4", "--sleep", "0.05"),
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "last.pt").exists():
            assert slow.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        assert slow.poll() is None, "training finished before it could be killed"
        slow.send_signal(signal.SIGKILL)
        slow.wait(timeout=30)
    finally:
        if slow.poll() is None:
            slow.kill()
    assert slow.returncode == -signal.SIGKILL
    assert load_checkpoint(out / "last.pt").epoch < 3 and not (out / "final.pt").exists()

    rerun = subprocess.run(_toy(out, "--epochs", "4"), env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed from" in rerun.stderr
    assert not list(out.glob(".*tmp*"))  # no temporary of an interrupted write is left behind
    assert_identical(weights(tmp_path / "ref"), weights(out))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(tmp_path: Path) -> None:
    """Global batch 8 either way: 1 process x 8, or 2 gloo processes x 4 over the same permutation (rank r
    takes every 2nd index), so the averaged gradients are the full-batch gradient. No dropout or input noise:
    those are drawn per rank by design."""
    single = run(tmp_path / "one", 3, batch=8, dropout=0.0, noise=0.0)
    env = _env()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        "-m", "tests.unit.training.toy", "--out", str(tmp_path / "two"), "--epochs", "3", "--batch", "4",
        "--dropout", "0", "--noise", "0",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    ddp = load_checkpoint(tmp_path / "two" / "last.pt")
    assert ddp.global_step == 6  # 2 steps of 4 per rank per epoch
    for a, b in zip(ddp.history, single.history, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
        assert a["val/mse"] == pytest.approx(b["val/mse"], rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_smoke(tmp_path: Path) -> None:
    task, train, val = build()
    cfg = FitConfig(
        epochs=2, checkpoint_every=1, monitor="mse", monitor_mode="min", seed=1, deterministic=False,
        device="cuda", precision="bf16",
    )  # fmt: skip
    result = fit(task, train, val, cfg, tmp_path)
    assert result.device.startswith("cuda") and result.precision_used == "bf16"
    states, _ = load_weights(tmp_path / "best.pt")
    assert all(t.device.type == "cpu" for t in states["net"].values())
