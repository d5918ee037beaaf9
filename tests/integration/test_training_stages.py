"""train_seg, train_ae and score_anomalies as stages, on a tiny phantom preprocessed here: outputs complete
and sane (no fixed score asserted), and a SIGKILLed train_seg resumes to the same weights."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import parse_section
from pipeline.data.slices import select_rows
from pipeline.preprocess.run import run_preprocess
from pipeline.preprocess.store import load_slices
from pipeline.training.checkpoint import load_weights
from tests.conftest import REPO_ROOT
from tests.helpers import lineage_stub, run_stage, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder holding params.yaml and data/preprocess for the tiny phantom."""
    root = tmp_path_factory.mktemp("train")
    params = tiny_params(root / "raw")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run_preprocess(
        parse_section(params, "preprocess"), root / "raw", root / "data" / "preprocess", 1, lineage_stub()
    )
    return root


def _in_unit(value: object) -> bool:
    return value is None or (isinstance(value, float) and 0.0 <= value <= 1.0)


def test_train_seg_train_ae_score_anomalies(project: Path) -> None:
    assert run_stage("train_seg", project) == 0
    seg = json.loads((project / "metrics" / "train_seg.json").read_text())
    assert seg["epochs_run"] == 2 and seg["device"] == "cpu"
    for split in ("val", "test"):
        assert seg[split]["n_cases"] >= 1 and _in_unit(seg[split]["dice_mean"])
    for name in ("last.pt", "best.pt", "model.pt", "lineage.json"):
        assert (project / "models" / "train_seg" / name).is_file(), name
    states, meta = load_weights(project / "models" / "train_seg" / "model.pt")
    assert "net" in states and meta["stage"] == "train_seg"
    assert (project / "dvclive" / "train_seg" / "plots" / "metrics").is_dir()

    assert run_stage("train_ae", project) == 0
    ae = json.loads((project / "metrics" / "train_ae.json").read_text())
    assert ae["train_normal_slices"] > 0 and 0 < ae["bottleneck_ratio"] < 1 and ae["best_val_loss"] > 0

    assert run_stage("score_anomalies", project) == 0
    sa = json.loads((project / "metrics" / "score_anomalies.json").read_text())
    for scorer in ("model", "baseline"):  # the baseline is always reported beside the model
        for level in ("slice", "case", "pixel"):
            report = sa[scorer]["test"][level]
            assert _in_unit(report["auroc"]) and _in_unit(report["auprc"]), (scorer, level)
        assert _in_unit(sa[scorer]["test"]["pixel"]["best_dice"])
    assert set(sa["threshold"]) == {"model", "baseline"}
    out = project / "data" / "score_anomalies"
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0].startswith("split,case_id,slice,label,score_model,score_baseline") and len(lines) > 10
    with tarfile.open(out / "maps" / "maps-0000.tar") as tar:
        assert all(m.name.endswith("_anomaly.nii") for m in tar.getmembers()) and tar.getmembers()
    assert list((out / "overlays").glob("*.png"))
    for curve in ("roc_model.csv", "roc_baseline.csv", "pr_model.csv", "pr_baseline.csv"):
        assert (project / "plots" / "score_anomalies" / curve).is_file()


@pytest.mark.parametrize("variant", ["mask2image", "label2image"])
def test_train_cgan_variants(project: Path, variant: str) -> None:
    assert run_stage("train_cgan", project, "--variant", variant) == 0
    metrics = json.loads((project / "metrics" / "train_cgan" / f"{variant}.json").read_text())
    assert metrics["variant"] == variant and metrics["epochs_run"] == 2
    assert metrics["best_val_swd"] > 0 and metrics["val_swd_real_floor"] >= 0
    # params.yaml repeats label2image's abnormal slices to about half an epoch; mask2image takes them as is
    store = load_slices(project / "data" / "preprocess" / "slices" / "train")
    min_fg = yaml.safe_load((project / "params.yaml").read_text())["train_cgan"]["min_foreground"]
    rows = select_rows(store, "labelled", min_fg)
    natural = float(np.mean(np.asarray(store.label)[rows] == 1))
    assert 0 < natural < 0.4, "the tiny phantom's train slices should be mostly normal"
    if variant == "label2image":
        assert metrics["train_abnormal_share"] == pytest.approx(0.5, abs=0.05)
        assert metrics["train_items_per_epoch"] > rows.size
    else:
        assert metrics["train_abnormal_share"] == pytest.approx(natural, abs=1e-5)
        assert metrics["train_items_per_epoch"] == rows.size
    final = metrics["final"]
    for key in ("d_real_acc", "d_fake_acc", "ada_p"):
        assert 0.0 <= final[key] <= 1.0, key
    states, meta = load_weights(project / "models" / "train_cgan" / variant / "model.pt")
    assert {"generator_ema", "generator", "discriminator"} <= set(states) and meta["variant"] == variant
    assert meta["silhouette_channel"] == (0 if variant == "mask2image" else None)
    live = project / "dvclive" / "train_cgan" / variant / "plots"
    assert (live / "images" / "samples.png").is_file()
    assert (live / "metrics" / "val" / "swd.tsv").is_file() and (
        live / "metrics" / "train" / "ada_p.tsv"
    ).is_file()


def test_killed_train_seg_resumes_to_the_same_weights(project: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_seg"]["train"]["epochs"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}

    def run(out: str) -> subprocess.Popen[str]:
        cmd = [
            sys.executable,
            "-m",
            "stages.train_seg",
            "--params",
            str(tmp_path / "params.yaml"),
            "--data",
            str(project / "data" / "preprocess"),
            "--out",
            str(tmp_path / out),
            "--metrics",
            str(tmp_path / f"{out}.json"),
            "--live",
            str(tmp_path / f"live_{out}"),
        ]
        return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)

    whole = run("whole")
    killed = run("killed")
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "last.pt").exists():
        assert time.time() < deadline and killed.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    rerun = run("killed")
    _, log = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    assert "resum" in log.lower(), log
    whole.communicate(timeout=300)
    a = load_weights(tmp_path / "whole" / "model.pt")[0]["net"]
    b = load_weights(tmp_path / "killed" / "model.pt")[0]["net"]
    assert all(torch.equal(a[k], b[k]) for k in a), (
        "resumed run must end with the uninterrupted run's weights"
    )


def test_train_cgan_runs_under_two_ddp_processes(project: Path, tmp_path: Path) -> None:
    """torchrun, 2 gloo processes: the GAN step's R1 penalty (a double backward through the DDP-wrapped
    discriminator), its separate G and D updates and the all-reduced ADA signal run, and the ranks end
    with the same augmentation probability."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_cgan"].update({"r1_every": 1, "r1_gamma": 1.0})
    params["train_cgan"]["train"].update({"epochs": 1, "batch_size": 4})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "stages.train_cgan",
        "--params", str(tmp_path / "params.yaml"), "--variant", "mask2image",
        "--data", str(project / "data" / "preprocess"), "--out", str(tmp_path / "out"),
        "--metrics", str(tmp_path / "m.json"), "--live", str(tmp_path / "live"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=project, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["epochs_run"] == 1, metrics
    assert metrics["final"]["r1"] > 0 and torch.isfinite(torch.tensor(metrics["final"]["g_loss"]))
    p_per_rank = re.findall(r"ada_p=([0-9.]+)", proc.stderr)
    assert len(p_per_rank) == 2 and len(set(p_per_rank)) == 1, p_per_rank
    states, _ = load_weights(tmp_path / "out" / "model.pt")
    assert all(torch.isfinite(t).all() for t in states["generator_ema"].values() if t.is_floating_point())
