"""The fixed choices of the `build`, `calibrate` and `triton` options as Enum types, made from the tuples of
values the library itself accepts: `--help` lists them and Typer refuses any other value before a command
runs. Members are named as their values (`Precision.fp16`); the commands pass `.value` on."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from ..build import BACKENDS, PRECISIONS
from ..calibration.qdq import HIGH_PRECISIONS, TARGETS
from ..calibration.ranges import METHODS
from ..triton import KINDS


def _choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A str Enum whose members are `values`, in their order (the order `--help` lists them in)."""
    return Enum(name, [(value, value) for value in values], type=str)


Precision = _choices("Precision", PRECISIONS)
Backend = _choices("Backend", BACKENDS)
Int8Target = _choices("Int8Target", TARGETS)
CalibrationMethod = _choices("CalibrationMethod", (*METHODS, "auto"))  # auto: each method, the least drift kept
HighPrecision = _choices("HighPrecision", HIGH_PRECISIONS)
TritonKind = _choices("TritonKind", KINDS)
