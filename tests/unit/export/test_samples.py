"""Samples: a label2image sample keeps its drawn label whatever its mask says, and the segmenter's mask is
the U-Net's lesion class, the same on every call."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.export.conditions import LABEL, TRAINING_MASK, Condition
from pipeline.export.samples import SEGMENTER_MASK, Sample, segment


class _Threshold(nn.Module):
    """A stand-in segmenter: lesion where the image is brighter than 0.7 (logits for 2 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(-0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x + self.bias], dim=1)


def test_segment_is_the_lesion_class_and_repeatable() -> None:
    image = np.zeros((16, 12), np.float32)
    image[4:8, 3:6] = 0.9
    mask = segment(_Threshold().eval(), image)
    assert mask.dtype == bool and mask.shape == image.shape
    assert np.array_equal(mask, image > 0.7)
    assert np.array_equal(segment(_Threshold().eval(), image), mask)


def test_label2image_sample_keeps_its_drawn_label() -> None:
    image = np.zeros((8, 8), np.float32)
    lesion = np.zeros((8, 8), bool)
    drawn_abnormal = Sample(
        "label2image_0000", 0, 1, Condition(LABEL, 1), image, lesion, False, SEGMENTER_MASK
    )
    assert drawn_abnormal.label == 1  # nothing found by the segmenter; still drawn as abnormal
    lesion[2, 2] = True
    drawn_normal = Sample("label2image_0001", 1, 2, Condition(LABEL, 0), image, lesion, False, SEGMENTER_MASK)
    assert drawn_normal.label == 0
    conditioned = Sample("mask2image_0000", 0, 3, Condition(TRAINING_MASK, 0, 5), image, lesion, False)
    assert conditioned.label == 1  # mask2image: the label is whether its conditioning mask has a lesion
