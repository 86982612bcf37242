"""What the machine is and what it uses: CPU, GPU, load, host and device memory (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ..artifacts import package_versions


# --------------------------------------------------------------------------------------------------------
# Host and device memory (Linux /proc; no psutil)
# --------------------------------------------------------------------------------------------------------
def proc_status_kib(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so the next peak belongs to what runs next."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class DeviceMemory:
    """Device-wide used bytes via cudaMemGetInfo (through torch, else cuda-python); None when neither works."""

    def __init__(self, device_index: int) -> None:
        self.device_index = device_index

    def used_bytes(self) -> int | None:
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                free, total = torch.cuda.mem_get_info(self.device_index)
                return int(total - free)
        with contextlib.suppress(Exception):
            from ..engines.cuda import import_cudart

            rt = import_cudart()
            if rt is not None:
                err, free, total = rt.cudaMemGetInfo()
                if int(err) == 0:
                    return int(total - free)
        return None


# --------------------------------------------------------------------------------------------------------
# What the machine is
# --------------------------------------------------------------------------------------------------------
def load_average() -> float | None:
    """The 1-minute load average (runnable threads, all processes): above the CPU count, timings are noisy."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Hardware", "Model", "cpu model"):
        if m := re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE):
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def system_info(device: str, threads: int, command: str | None) -> dict[str, Any]:
    """CPU, GPU, threads, package versions and the command line, recorded with every report."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads_requested": threads,
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "device": device,
        "versions": package_versions("addunet-edge", "torch", "onnxruntime", "onnx", "numpy", "tensorrt"),
        "command": command if command is not None else shlex.join(sys.argv),
        "load_average_start": load_average(),
        "created_unix": round(time.time(), 3),
    }
    with contextlib.suppress(OSError):
        info["board"] = Path("/proc/device-tree/model").read_text().strip("\0\n ")
    with contextlib.suppress(Exception):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            info["gpu"] = torch.cuda.get_device_name(index)
            info["gpu_compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    if device.startswith("cuda") and "gpu" not in info:
        with contextlib.suppress(Exception):
            from ..engines.cuda import gpu_identity

            gpu = gpu_identity(device_index(device))
            info["gpu"], info["gpu_compute_capability"] = gpu.name, gpu.compute_capability
    return info


def device_index(device: str) -> int:
    """'cuda:1' -> 1; 'cuda' or 'cpu' -> 0."""
    index = device.partition(":")[2]
    return int(index) if index else 0


def has_nvidia_gpu() -> bool:
    """An NVIDIA GPU (desktop device node, Jetson's nvhost, or one torch can see) is on this machine."""
    if Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl").exists():
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False
