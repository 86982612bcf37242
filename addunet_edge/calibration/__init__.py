"""Precision variants of an fp32 ONNX model: fp16 conversion, calibration ranges, int8 Q/DQ, sensitivity."""

from __future__ import annotations

from .calibration_set import MIN_CALIBRATION_IMAGES, CalibrationSet
from .fp16 import DEFAULT_BLOCK_OPS, FP16_OVERFLOW_ABS, convert_fp16
from .qdq import TARGETS, quantizable_nodes, quantize_int8
from .ranges import DEFAULT_PERCENTILE, METHODS, Ranges, collect_ranges
from .sensitivity import (
    CalibrationReport,
    EvalImages,
    FallbackReport,
    calibrate,
    fallback_to_budget,
    run_onnx,
)

__all__ = [
    "DEFAULT_BLOCK_OPS",
    "DEFAULT_PERCENTILE",
    "FP16_OVERFLOW_ABS",
    "METHODS",
    "MIN_CALIBRATION_IMAGES",
    "TARGETS",
    "CalibrationReport",
    "CalibrationSet",
    "EvalImages",
    "FallbackReport",
    "Ranges",
    "calibrate",
    "collect_ranges",
    "convert_fp16",
    "fallback_to_budget",
    "quantizable_nodes",
    "quantize_int8",
    "run_onnx",
]
