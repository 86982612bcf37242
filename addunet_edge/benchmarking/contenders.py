"""Contenders: each engine and how it is timed, and where an artifact came from (its PyTorch baseline and
the model config its MACs are counted from)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engines import Engine
from ..errors import ConfigError

_POWER_WINDOW_S = 1.5
_MIB = 1024 * 1024

Shape = tuple[int, int, int, int]


# --------------------------------------------------------------------------------------------------------
# Where an artifact came from: its checkpoint (the baseline) and its model config (the MACs)
# --------------------------------------------------------------------------------------------------------
def lineage(artifact: str | Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint folder, model config dict) an artifact was made from, following manifests' `source`."""
    from ..artifacts import trace_provenance
    from ..checkpoint import is_checkpoint, read_checkpoint_meta

    path = Path(artifact)
    if path.is_dir():
        return (path, read_checkpoint_meta(path).get("model")) if is_checkpoint(path) else (None, None)
    prov = trace_provenance(path, verify=False)
    model = prov.model
    if prov.checkpoint is not None and model is None:
        model = read_checkpoint_meta(prov.checkpoint).get("model")
    return prov.checkpoint, model


_MAC_CACHE: dict[tuple[str, int, int], int] = {}


def macs_per_image(model_config: dict[str, Any] | None, height: int, width: int) -> int | None:
    """Multiply-accumulates of one image at height x width (None without a model config)."""
    if not model_config:
        return None
    key = (repr(sorted(model_config.items())), height, width)
    if key not in _MAC_CACHE:
        from ..model import ModelConfig, build_model, count_macs

        _MAC_CACHE[key] = count_macs(build_model(ModelConfig.from_dict(model_config)), height, width).macs
    return _MAC_CACHE[key]


# --------------------------------------------------------------------------------------------------------
# Contenders: one engine timed one way
# --------------------------------------------------------------------------------------------------------
def check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


@dataclass
class Contender:
    label: str
    artifact: str
    engine: Engine
    timing: str
    baseline: bool
    model_config: dict[str, Any] | None
    cuda_graph: bool = False
    device_base_bytes: int | None = None

    @property
    def backend(self) -> str:
        return self.engine.backend

    def timer(self, shape: Shape) -> Callable[[int], list[float]]:
        """A function running n timed inferences at `shape`, returning their latencies in ms."""
        if self.backend == "tensorrt":
            copies, graph = self.timing == "end_to_end", self.cuda_graph
            return lambda n: self.engine.time_inference(  # type: ignore[attr-defined]
                shape, n, include_copies=copies, use_cuda_graph=graph
            )
        if self.timing == "compute":  # torch on CUDA, input already on the device
            import torch

            device = self.engine.device  # type: ignore[attr-defined]
            x = torch.rand(shape, device=device, generator=torch.Generator(device=device).manual_seed(0))
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def run_device(n: int) -> list[float]:
                out = []
                for _ in range(n):
                    start.record()
                    self.engine(x)
                    end.record()
                    end.synchronize()
                    out.append(float(start.elapsed_time(end)))
                return out

            return run_device
        x_host = np.random.default_rng(0).random(shape, dtype=np.float32)

        def run_host(n: int) -> list[float]:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                self.engine(x_host)
                out.append((time.perf_counter() - t0) * 1e3)
            return out

        return run_host


def timings_for(backend: str, device: str) -> tuple[str, ...]:
    if backend == "tensorrt":
        return ("compute", "end_to_end")
    if device == "cpu":
        return ("host",)
    return ("compute", "end_to_end") if backend == "torch" else ("end_to_end",)


def engine_label(artifact: Path, backend: str) -> str:
    return f"{artifact.name} (torch)" if backend == "torch" else artifact.name
