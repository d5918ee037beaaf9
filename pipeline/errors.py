"""One small exception hierarchy for the whole pipeline.

Messages name the file (relative to the data root where there is one) and the reason. They never carry a
header value that could identify a patient: readers build their own text instead of echoing DICOM values.
"""

from __future__ import annotations


class MedsynthError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(MedsynthError):
    """`params.yaml` (or a typed section of it) is missing a key, has an unknown key or an ill-typed value."""


class InputDataError(MedsynthError):
    """An input file or series cannot be used. ``file`` names it; ``reason`` is a short, PHI-free text."""

    def __init__(self, file: str, reason: str, code: str = "invalid") -> None:
        self.file = file
        self.reason = reason
        self.code = code
        super().__init__(f"{file}: {reason}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Rejections travel back from worker processes; the default pickling loses our arguments.
        return (type(self), (self.file, self.reason, self.code))


class GeometryError(InputDataError):
    """A series or volume whose geometry cannot be established or is not a regular 3D grid."""


class PipelineStateError(MedsynthError):
    """A stage cannot go on: e.g. no usable case left, or too many rejected."""
