"""The audit chain of one exported file: manifest row → export params and seed → generator checkpoint → its
training run → preprocess → raw input files, checking every recorded hash against the file on disk now.

DVC records stage-level hashes after a run; the chain adds what DVC cannot say: which seed, which training
slice and which checkpoint made this one file, and whether each of those is still the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.audit import recorded_verdict
from pipeline.lineage.hashing import combined_hash, sha256_file
from pipeline.lineage.record import LINEAGE_FILE

__all__ = ["sample_chain"]


def _check(what: str, path: Path, recorded: str, root: Path) -> dict[str, Any]:
    now = sha256_file(path) if path.is_file() else None
    return {
        "what": what,
        "path": _shown(path, root),
        "recorded_sha256": recorded,
        "disk_sha256": now,
        "status": "missing" if now is None else ("match" if now == recorded else "CHANGED"),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _dvc_status(root: Path, stages: list[str]) -> dict[str, Any]:
    """DVC's own verdict per stage ({} = up to date); None when DVC cannot answer (no repo)."""
    try:
        from dvc.repo import Repo

        repo = Repo(str(root))
    except Exception as err:  # DVC raises many types; the chain is still useful without its verdict
        return {"error": f"{type(err).__name__}: {err}"}
    out: dict[str, Any] = {}
    with repo:
        for name in stages:
            try:
                out[name] = repo.status(targets=[name]).get(name, "up to date")
            except Exception as err:  # e.g. a stage renamed since the export
                out[name] = f"unknown ({type(err).__name__}: {err})"
    return out


def _shown(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def _stage_summary(
    name: str, record: dict[str, Any] | None, lineage_path: Path, root: Path
) -> dict[str, Any]:
    if record is None:
        return {"stage": name, "lineage": None}
    code = record.get("code", {})
    return {
        "stage": name,
        "lineage": _shown(lineage_path, root),
        "git_commit": code.get("git_commit"),
        "git_dirty": code.get("git_dirty"),
        "seeds": record.get("seeds", {}),
        "params": record.get("params", {}),
        "run_key": record.get("run_key"),
        "device": record.get("device"),
        "precision": record.get("precision"),
        "determinism_audit": recorded_verdict(root, name),
    }


def sample_chain(
    file: Path, repo_root: Path, check_raw: bool = True, dvc_status: bool = True
) -> dict[str, Any]:
    """The chain of ``file`` (a file of an export folder) as a JSON-ready dict: ``sample`` (its manifest
    row), ``stages`` (newest first), ``checks`` (every recorded hash against the disk) and ``dvc`` (DVC's
    status of the stages involved). ``ok`` is True when every check matches."""
    from pipeline.export.regenerate import find_sample  # the export package owns the manifest format

    root = Path(repo_root)
    folder, row, role = find_sample(file, root)
    export_record = _read_json(folder / LINEAGE_FILE) or {}
    variant = row["variant"]
    checks = [_check(f"this file ({role})", folder / row[role], row[f"{role}_sha256"], root)]
    for other in ("image_nifti", "mask_nifti", "image_dicom", "seg_dicom"):
        if other != role and row.get(other):
            checks.append(_check(f"same sample ({other})", folder / row[other], row[f"{other}_sha256"], root))
    generator = root / export_record.get("generator", {}).get("file", "")
    checks.append(_check("generator checkpoint", generator, row["generator_sha256"], root))
    inputs = export_record.get("inputs", {})
    if "features" in inputs:
        checks.append(
            _check(
                "feature model (memorisation gate)",
                root / export_record["feature_model"],
                inputs["features"],
                root,
            )
        )
    segmenter = export_record.get("segmenter") if row.get("mask_source") == "segmenter" else None
    if segmenter:
        checks.append(
            _check("segmenter (mask of this sample)", root / segmenter["file"], segmenter["sha256"], root)
        )
    stages = [
        {
            **_stage_summary(f"export@{variant}", export_record, folder / LINEAGE_FILE, root),
            "params_sha256": export_record.get("params_sha256"),
            "code_version": export_record.get("code_version"),
        }
    ]
    train_lineage = generator.parent / LINEAGE_FILE
    stages.append(_stage_summary(f"train_cgan@{variant}", _read_json(train_lineage), train_lineage, root))
    if segmenter:
        seg_lineage = (root / segmenter["file"]).parent / LINEAGE_FILE
        stages.append(_stage_summary("train_seg", _read_json(seg_lineage), seg_lineage, root))
    data_dir = root / export_record.get("data", "data/preprocess")
    pre_lineage = data_dir / LINEAGE_FILE
    pre_record = _read_json(pre_lineage)
    stages.append(_stage_summary("preprocess", pre_record, pre_lineage, root))
    raw: dict[str, Any] = {}
    if pre_record is not None:
        files = pre_record.get("inputs", {}).get("files", {})
        data_root = root / pre_record.get("params", {}).get("preprocess", {}).get("data_root", "")
        raw = {"data_root": data_root.as_posix(), "n_files": len(files), "combined_sha256": None}
        if check_raw:
            now = {}
            counts = {"match": 0, "CHANGED": 0, "missing": 0}
            changed = []
            for rel, digest in files.items():
                c = _check("raw input", data_root / rel, digest, root)
                counts[c["status"]] += 1
                if c["status"] != "match":
                    changed.append(c["path"])
                if c["disk_sha256"] is not None:
                    now[rel] = c["disk_sha256"]
            raw.update(counts)
            raw["changed_or_missing"] = changed[:50]
            recorded = pre_record.get("inputs", {}).get("data_root")
            raw["combined_sha256"] = {
                "recorded": recorded,
                "disk": combined_hash(now) if len(now) == len(files) else None,
            }
    names = [
        f"export@{variant}",
        f"train_cgan@{variant}",
        *(["train_seg"] if segmenter else []),
        "preprocess",
    ]
    sample = {
        k: row.get(k)
        for k in (
            "sample_id",
            "variant",
            "seed",
            "label",
            "condition_source",
            "condition_case",
            "condition_slice",
            "lesion_added",
            "mask_source",
            "generator_run_key",
            "params_sha256",
            "code_version",
            "nn_detail_corr",
            "nn_feature_cos",
        )
    }
    ok = (
        all(c["status"] == "match" for c in checks)
        and raw.get("CHANGED", 0) == 0
        and raw.get("missing", 0) == 0
    )
    out = {
        "file": Path(file).as_posix(),
        "export": _shown(folder, root),
        "sample": sample,
        "stages": stages,
        "checks": checks,
        "raw_inputs": raw,
        "ok": ok,
    }
    if dvc_status:
        out["dvc"] = _dvc_status(root, names)
    return out


def format_chain(chain: dict[str, Any]) -> str:
    """The chain as text for a terminal."""
    s = chain["sample"]
    lines = [
        f"sample {s['sample_id']} ({s['variant']}): seed {s['seed']}, label {s['label']}",
        f"  conditioned on: {s['condition_source']}"
        + (f" case {s['condition_case']} slice {s['condition_slice']}" if s.get("condition_case") else ""),
        f"  nearest training slice: detail corr {s['nn_detail_corr']}, feature cos {s['nn_feature_cos']}",
    ]
    for st in chain["stages"]:
        lines.append(f"== {st['stage']}: {st.get('lineage')}")
        if st.get("lineage") is None:
            lines.append("   no lineage record")
            continue
        lines.append(
            f"   code {st.get('git_commit')} dirty={st.get('git_dirty')}; seeds {json.dumps(st['seeds'])}"
        )
        if st.get("run_key"):
            lines.append(f"   run key {st['run_key']}")
        if st.get("params_sha256"):
            lines.append(f"   params sha256 {st['params_sha256']}")
        audit = st.get("determinism_audit")
        if audit:
            lines.append(
                f"   determinism audit: {audit['verdict']} on CPU"
                + ("" if audit["current_code"] else " (audited other code: rerun the audit)")
            )
    lines.append("== recorded hashes against the disk")
    for c in chain["checks"]:
        lines.append(f"   {c['status']:8s} {c['what']}: {c['path']}")
    raw = chain.get("raw_inputs") or {}
    if raw:
        lines.append(
            f"   raw inputs under {raw['data_root']}: {raw.get('n_files')} recorded"
            + (
                f", {raw.get('match', 0)} match, {raw.get('CHANGED', 0)} changed, "
                f"{raw.get('missing', 0)} missing"
                if "match" in raw
                else " (not checked)"
            )
        )
    if "dvc" in chain:
        lines.append("== dvc status")
        for name, status in chain["dvc"].items():
            lines.append(f"   {name}: {status if status else 'up to date'}")
    lines.append("OK: every recorded hash matches" if chain["ok"] else "NOT OK: see CHANGED / missing above")
    return "\n".join(lines)
