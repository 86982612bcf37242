"""What a built TensorRT plan really holds: each layer's precision and device, read back after the build.

A strongly typed plan computes in the types of its ONNX, and a DLA build with GPU fallback may put any
layer on the GPU without an error. Neither shows in the build flags, so after every build the engine
inspector's per-layer JSON (precision, from each layer's tensor formats) and the builder's log (which
lists the layers running on DLA and on the GPU) are read back, recorded in the manifest and checked
against what was asked for. This module is pure parsing and checking: it runs, and is tested, without
TensorRT.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ArtifactError, BudgetError

# A DLA plan may leave a few layers on the GPU (reformats at its edges, an unsupported op); past this
# share of its layers it is a GPU plan that happens to touch the DLA, and `build` refuses it.
MAX_GPU_SHARE_FOR_DLA = 0.25
PRECISIONS = ("int8", "fp16", "fp32")

# Engine inspector formats name the element type first ("Int8 NC/32HW32", "Channel major FP16 format
# where channel % 8 == 0", "Row major linear FP32"); TensorRT 11 also gives a bare "DataType" ("Half").
_TYPE_WORDS: tuple[tuple[str, str], ...] = (
    (r"\bint8\b", "int8"),
    (r"\bfp16\b|\bhalf\b", "fp16"),
    (r"\bfp32\b|\bfloat\b", "fp32"),
    (r"\bbfloat16\b|\bbf16\b", "bf16"),
    (r"\bfp8\b", "fp8"),
    (r"\bint32\b|\bint64\b|\bbool\b|\buint8\b", "int/bool"),
)
# The builder logs where each layer went ("[DlaLayer] {ForeignNode[...]}" / "[GpuLayer] CONVOLUTION: x")
# under "Layers Running on DLA" / "Layers Running on GPU" when a DLA core is set.
_PLACEMENT = re.compile(r"\[(Dla|Gpu)Layer\]\s*(.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    kind: str  # LayerType (or ParameterType) as the inspector names it
    precision: str  # int8 | fp16 | fp32 | bf16 | fp8 | int/bool | unknown: the widest type it computes with
    device: str  # dla | gpu


@dataclass
class PlanLayers:
    """Per-layer read-back of a plan and its summary (what the manifest, the build report and `info` show)."""

    layers: list[LayerInfo]
    dla_core: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def by_precision(self) -> dict[str, int]:
        return dict(Counter(layer.precision for layer in self.layers))

    @property
    def by_device(self) -> dict[str, int]:
        return dict(Counter(layer.device for layer in self.layers))

    @property
    def gpu_share(self) -> float:
        return self.by_device.get("gpu", 0) / max(1, len(self.layers))

    def summary(self) -> dict[str, Any]:
        return {
            "layers": len(self.layers),
            "precision": self.by_precision,
            "device": self.by_device,
            "dla_core": self.dla_core,
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "per_layer": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlanLayers:
        try:
            layers = [LayerInfo(**layer) for layer in d.get("per_layer", [])]
        except TypeError as e:
            raise ArtifactError(f"malformed layer read-back in a plan manifest: {e}") from None
        return cls(layers=layers, dla_core=d.get("dla_core"), notes=list(d.get("notes", [])))

    def table(self) -> list[tuple[str, str, str, str]]:
        """(layer, kind, precision, device) rows, in engine order."""
        return [(layer.name, layer.kind, layer.precision, layer.device) for layer in self.layers]


def _tensor_type(tensor: Any) -> str | None:
    if not isinstance(tensor, dict):
        return None
    text = " ".join(str(tensor.get(k, "")) for k in ("Format/Datatype", "DataType", "Format")).lower()
    for pattern, name in _TYPE_WORDS:
        if re.search(pattern, text):
            return name
    return None


def _layer_precision(layer: dict[str, Any]) -> str:
    """int8 when any tensor of the layer is int8 (a quantized conv reads and writes int8), else the first
    float type among its inputs and outputs, in the order fp16, fp32."""
    types = {_tensor_type(t) for t in [*layer.get("Inputs", []), *layer.get("Outputs", [])]} - {None}
    for precision in ("int8", "fp8", "fp16", "bf16", "fp32", "int/bool"):
        if precision in types:
            return precision
    return "unknown"


def _placements(log_lines: Iterable[str]) -> dict[str, str]:
    placed: dict[str, str] = {}
    for line in log_lines:
        match = _PLACEMENT.search(line)
        if match:
            where, what = match.group(1).lower(), match.group(2)
            placed[what.split(": ", 1)[-1].strip()] = where
    return placed


def read_layers(engine_json: str, log_lines: Sequence[str] = (), dla_core: int | None = None) -> PlanLayers:
    """Parse the engine inspector's JSON (ProfilingVerbosity.DETAILED) and the build log into PlanLayers."""
    try:
        doc = json.loads(engine_json)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"the engine inspector returned no JSON ({e})") from None
    raw = doc.get("Layers") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw:
        raise ArtifactError(
            "the engine inspector listed no layers: was the plan built with ProfilingVerbosity.DETAILED?"
        )
    placed = _placements(log_lines)
    notes: list[str] = []
    if dla_core is not None and not placed:
        notes.append("the build log names no layer placement: every layer is counted as running on the GPU")
    layers = []
    for entry in raw:
        if isinstance(entry, str):  # LAYER_NAMES_ONLY verbosity: names without types
            entry = {"Name": entry}
        name = str(entry.get("Name", "?"))
        kind = str(entry.get("LayerType") or entry.get("ParameterType") or "?")
        on_dla = dla_core is not None and (
            placed.get(name) == "dla" or kind.lower() in ("dla", "foreignnode") or "foreignnode" in name.lower()
        )
        layers.append(LayerInfo(name, kind, _layer_precision(entry), "dla" if on_dla else "gpu"))
    return PlanLayers(layers=layers, dla_core=dla_core, notes=notes)


def check_layers(
    layers: PlanLayers, precision: str, *, max_gpu_share: float = MAX_GPU_SHARE_FOR_DLA, label: str = "the plan"
) -> None:
    """Refuse (BudgetError, exit code 3) a plan that does not hold what was asked for: an int8 plan with no
    int8 layer, an fp16 plan with neither fp16 nor int8 layers, a DLA plan running more than
    `max_gpu_share` of its layers on the GPU."""
    counts = layers.by_precision
    problems = []
    if precision == "int8" and not counts.get("int8"):
        problems.append("int8 was asked for, and no layer computes in int8")
    if precision == "fp16" and not (counts.get("fp16") or counts.get("int8")):
        problems.append("fp16 was asked for, and no layer computes in fp16")
    if layers.dla_core is not None and layers.gpu_share > max_gpu_share:
        problems.append(
            f"DLA core {layers.dla_core} was asked for, and {layers.by_device.get('gpu', 0)} of "
            f"{len(layers.layers)} layers ({100 * layers.gpu_share:.0f} %) run on the GPU (at most "
            f"{100 * max_gpu_share:.0f} % allowed)"
        )
    if problems:
        rows = "\n".join(f"  {n} | {k} | {p} | {d}" for n, k, p, d in layers.table())
        raise BudgetError(f"{label}: " + "; ".join(problems) + f". Layers (name | type | precision | device):\n{rows}")


def format_summary(summary: dict[str, Any]) -> str:
    """'24 layers: int8 19, fp16 5; gpu 24' for the build line and `info`."""
    precision = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("precision", {}).items()))
    device = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("device", {}).items()))
    return f"{summary.get('layers', 0)} layers: {precision}; {device}"
