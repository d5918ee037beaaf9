"""What every stage entry point shares: arguments, logging, params, lineage basics, exit codes.

Stages are the only place that reads argv, the environment or the working directory (with `pipeline.cli`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import load_params, parse_section
from pipeline.errors import ConfigError, InputDataError, MedsynthError, PipelineStateError
from pipeline.lineage.record import build_lineage, code_version

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Exit codes: 0 ok, 2 bad configuration, 3 bad input data, 4 nothing usable left, 1 anything else.
EXIT_CODES = {ConfigError: 2, InputDataError: 3, PipelineStateError: 4}


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m stages.{stage}", description=(doc or "").strip().splitlines()[0]
    )
    p.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def load(params_path: Path, *sections: str) -> tuple[dict[str, Any], list[Any]]:
    params = load_params(params_path)
    return params, [parse_section(params, s) for s in sections]


def base_lineage(
    stage: str, section: Any, seeds: dict[str, int], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return build_lineage(
        stage=stage,
        params={stage: section.model_dump()},
        seeds=seeds,
        inputs={},
        code=code_version(REPO_ROOT),
        extra=extra,
    )


def run_main(stage: str, body: Callable[[], None]) -> int:
    """Run ``body`` and turn the pipeline's typed errors into one clear line and an exit code."""
    log = logging.getLogger(f"stages.{stage}")
    try:
        body()
    except MedsynthError as err:
        code = next((c for t, c in EXIT_CODES.items() if isinstance(err, t)), 1)
        log.error("%s failed: %s", stage, err)
        return code
    except KeyboardInterrupt:
        log.error("%s interrupted; earlier outputs are left as they were", stage)
        return 130
    return 0
