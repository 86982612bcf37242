"""The PyTorch backend: a checkpoint folder run eagerly; the reference every other engine is checked against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import sha256_file
from .base import Engine, EngineInfo, InputProfile


class TorchEngine(Engine):
    backend = "torch"
    # The model is in eval mode and run under inference_mode: no module buffer, statistic or cache changes
    # during forward (BatchNorm uses its running stats, the gates are read, not written), so calls overlap.
    reentrant = True

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(path)
        import torch

        from ..checkpoint import load_checkpoint

        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            from ..errors import DeviceError

            raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU")
        self.model, self.meta = load_checkpoint(self.path, device=self.device)
        cfg = self.model.config
        self._info = EngineInfo(
            backend=self.backend,
            precision="fp32",
            device=str(self.device),
            profile=InputProfile(channels=cfg.in_channels),  # the model pads odd sizes itself
            num_classes=cfg.num_classes,
            source=str(self.path),
            source_sha256=self.meta.get("weights_sha256") or sha256_file(self.path / "model.safetensors"),
            extra={"model": cfg.to_dict()},
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def _activate(self) -> None:
        return None

    def _accepts_device_tensor(self, tensor: Any) -> bool:
        return True

    def _infer(self, noisy: Any) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():
            if isinstance(noisy, np.ndarray):
                d, lg = self.model(torch.from_numpy(noisy).to(self.device))
                return d.cpu().numpy(), lg.cpu().numpy()
            return self.model(noisy.to(self.device))
