"""The evaluate stage end to end on the tiny phantom: every section of the metrics file present and in
range, floors beside every distance, plot tables, summary and grid written, and the same numbers twice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_stage, tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    params = tiny_params(root / "raw")
    params["preprocess"]["data_root"] = str(root / "raw")
    params["export"]["memorisation"]["max_flagged_fraction"] = 1.0  # a 2-epoch GAN
    params["evaluate"]["utility"].update({"seeds": [0, 1], "epochs": 2, "steps_per_epoch": 2})
    params["evaluate"]["ms_ssim_pairs"] = 20
    params["evaluate"]["kid_subsets"] = 10
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("preprocess", "train_seg", "train_ae"):
        assert run_stage(stage, root) == 0
    for variant in ("mask2image", "label2image"):
        assert run_stage("train_cgan", root, "--variant", variant) == 0
        assert run_stage("export", root, "--variant", variant) == 0
    return root


def _evaluate(root: Path, variant: str, tag: str, *extra: str) -> dict:
    assert (
        run_stage(
            "evaluate",
            root,
            "--variant",
            variant,
            "--out",
            f"data/evaluate/{tag}",
            "--plots",
            f"plots/evaluate/{tag}",
            "--metrics",
            f"metrics/evaluate/{tag}.json",
            *extra,
        )
        == 0
    )
    return json.loads((root / "metrics" / "evaluate" / f"{tag}.json").read_text())


def _without_seconds(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "seconds"}


def test_mask2image_evaluation_is_complete_sane_and_repeatable(project: Path) -> None:
    m = _evaluate(project, "mask2image", "mask2image")
    for space in ("autoencoder", "segmenter"):
        s = m["fidelity"][space]
        assert s["frechet"]["value"] >= 0 and s["frechet"]["floor"] >= 0
        assert s["kid"]["std"] >= 0 and "floor_mean" in s["kid"]
        for key in ("precision", "recall", "floor_precision", "floor_recall"):
            assert 0.0 <= s[key] <= 1.0
    assert m["fidelity"]["swd"]["value"] > 0 and m["fidelity"]["swd"]["floor"] > 0
    assert 0.0 < m["fidelity"]["ms_ssim"]["synthetic"] <= 1.0
    for part in ("synthetic", "real_test"):
        assert m["conditioning"][part]["n_slices"] > 0
    p = m["privacy"]
    assert p["memorisation"]["n_samples"] == 10
    assert p["dcr"]["pixel"]["ratio"] > 0 and 0 <= p["dcr"]["autoencoder"]["closer_to_train_fraction"] <= 1
    for who in ("discriminator", "autoencoder"):
        assert 0.0 <= p["membership"][who]["auc"] <= 1.0
    u = m["utility"]
    for arm in ("real", "real_plus_synthetic", "synthetic"):
        assert 0.0 <= u[arm]["dice"]["mean"] <= 1.0 and u[arm]["dice"]["n"] == 2
    gain = u["real_plus_synthetic"]["dice"]["mean"] - u["real"]["dice"]["mean"]
    assert u["gain"]["mean"] == pytest.approx(gain, abs=1e-5)  # the file keeps 6 significant digits
    assert set(m["goals"]) >= {"frechet_within_2x_floor", "utility_gain_at_least_0.02"}

    out = project / "data" / "evaluate" / "mask2image"
    assert (out / "grid.png").stat().st_size > 0 and (out / "lineage.json").is_file()
    summary = (out / "summary.md").read_text()
    assert "Fréchet distance" in summary and "Usefulness" in summary
    plots = project / "plots" / "evaluate" / "mask2image"
    with open(plots / "utility.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["arm"] for r in rows} == {"real", "real_plus_synthetic", "synthetic"}
    for name in ("dcr_train.csv", "dcr_holdout.csv"):
        with open(plots / name, newline="") as fh:
            assert sum(int(r["count"]) for r in csv.DictReader(fh)) == m["n_synthetic"]

    again = _evaluate(project, "mask2image", "mask2image_again")
    assert _without_seconds(again) == _without_seconds(m)


def test_label2image_evaluation_scores_labels_not_its_own_masks(project: Path) -> None:
    """label2image masks are the U-Net's own predictions: evaluate scores the drawn labels against what
    the U-Net finds (not the masks, which would be circular), and trains on the pseudo-labelled pairs."""
    m = _evaluate(project, "label2image", "label2image")
    assert "conditioning" not in m
    lc = m["label_conditioning"]
    for part in ("synthetic", "real_test"):
        for key in ("abnormal_with_lesion", "normal_without_lesion"):
            assert lc[part][key] is None or 0.0 <= lc[part][key] <= 1.0
    assert lc["synthetic"]["n_abnormal"] + lc["synthetic"]["n_normal"] == m["n_synthetic"]
    assert m["fidelity"]["autoencoder"]["frechet"]["floor"] >= 0
    assert {"real", "real_plus_synthetic", "synthetic"} <= set(m["utility"])
    assert "utility_gain_at_least_0.02" in m["goals"]
    summary = (project / "data" / "evaluate" / "label2image" / "summary.md").read_text()
    assert "Label fidelity" in summary


def test_label2image_without_masks_has_no_usefulness(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["export"]["label2image_masks"] = "none"
    (project / "params_nomask.yaml").write_text(yaml.safe_dump(params))
    out, nomask = "data/export/label2image_nomask", ("--params", "params_nomask.yaml")
    assert (
        run_stage(
            "export", project, "--variant", "label2image", "--out", out, "--metrics", f"{out}.json", *nomask
        )
        == 0
    )
    m = _evaluate(
        project, "label2image", "l2i_nomask", "--export", out, "--export-metrics", f"{out}.json", *nomask
    )
    assert "utility" not in m and "label_conditioning" in m
    assert not (project / out / "labelsTr").exists()


def test_missing_export_is_a_clear_error(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = run_stage("evaluate", project, "--variant", "mask2image", "--export", "data/export/nowhere")
    assert code != 0
    assert "data/export/nowhere/manifest.csv" in caplog.text and "missing" in caplog.text
