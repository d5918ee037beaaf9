"""train_ae: train the denoising autoencoder on normal slices (the reference for anomaly scoring)."""

from __future__ import annotations

import sys

from pipeline.training.ae import train_ae
from stages._training import training_main

STAGE = "train_ae"


def main(argv: list[str] | None = None) -> int:
    return training_main(
        STAGE, __doc__, train_ae, lambda m: f"best validation reconstruction loss {m['best_val_loss']}", argv
    )


if __name__ == "__main__":
    sys.exit(main())
