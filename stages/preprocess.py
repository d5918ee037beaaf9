"""preprocess: validate, orient, resample, normalise and split the scans under `preprocess.data_root`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pipeline.preprocess.run import run_preprocess
from stages._common import base_lineage, load, parser, run_main, setup_logging

STAGE = "preprocess"
log = logging.getLogger(f"stages.{STAGE}")


def main(argv: list[str] | None = None) -> int:
    p = parser(STAGE, __doc__)
    p.add_argument("--out", type=Path, default=Path("data/preprocess"), help="output folder")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        _, (cfg,) = load(args.params, STAGE)
        root = Path(cfg.data_root).resolve()
        cases_csv = (root / cfg.cases_csv) if cfg.cases_csv else None
        workers = cfg.workers or (os.cpu_count() or 1)
        lineage = base_lineage(STAGE, cfg, {"split": cfg.split.seed}, {"workers": workers})
        plan = run_preprocess(cfg, root, args.out, workers, lineage, cases_csv)
        log.info(
            "%d case(s) of %d patient(s) → %s; slices per split %s; %d rejected (see rejected.csv)",
            plan["n_cases"],
            plan["n_patients"],
            args.out,
            plan["slices_per_split"],
            plan["n_rejected"],
        )

    return run_main(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())
