"""What this machine can run: packages, GPU, Jetson, and for each command whether it works here."""

from __future__ import annotations

import importlib
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._lazy import available, install_hint
from .artifacts import package_versions

_DISTRIBUTIONS = (
    "addunet-edge",
    "numpy",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxslim",
    "tensorrt",
    "cuda-python",
    "pycuda",
    "opencv-python-headless",
    "opencv-python",
    "bm3d",
    "nvidia-modelopt",
    "polygraphy",
)
_JETSON_MODEL = Path("/proc/device-tree/model")
_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# L4T major release -> JetPack major (NVIDIA's JetPack archive): R32 is JetPack 4, R35 5, R36 6, R38 7.
_L4T_TO_JETPACK = {"32": "4", "34": "5", "35": "5", "36": "6", "38": "7"}


def _try(fn: Any, default: Any = None) -> Any:
    try:
        return fn()
    except Exception:
        return default


def _torch_report() -> dict[str, Any]:
    if not available("torch"):
        return {"version": None, "cuda_available": False, "cuda_version": None, "devices": []}
    import torch

    cuda = bool(_try(torch.cuda.is_available, False))
    devices = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            devices.append({"name": torch.cuda.get_device_name(i), "compute_capability": f"{major}.{minor}"})
    return {
        "version": torch.__version__,
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "devices": devices,
    }


def _onnxruntime_report() -> dict[str, Any]:
    if not available("onnxruntime"):
        return {"version": None, "providers": []}
    import onnxruntime

    return {"version": onnxruntime.__version__, "providers": list(onnxruntime.get_available_providers())}


def _gpus_from_cuda_bindings() -> list[dict[str, str]]:
    from .engines.cuda import open_cuda

    cuda = open_cuda("doctor")
    try:
        gpu = cuda.properties()
    finally:
        cuda.close()
    return [{"name": gpu.name, "compute_capability": gpu.compute_capability, "sm_count": str(gpu.sm_count)}]


def _gpus_from_nvidia_smi() -> list[dict[str, str]]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    result = subprocess.run(
        [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    gpus = []
    for line in result.stdout.splitlines() if result.returncode == 0 else []:
        name, _, cc = line.rpartition(",")
        if name.strip():
            gpus.append({"name": name.strip(), "compute_capability": cc.strip()})
    return gpus


def _gpu_report(torch_report: dict[str, Any]) -> dict[str, Any]:
    """The GPUs, from whichever of torch.cuda, cuda-python / pycuda or nvidia-smi answers first."""
    if torch_report["devices"]:
        return {"present": True, "source": "torch.cuda", "devices": torch_report["devices"]}
    devices = _try(_gpus_from_cuda_bindings, [])
    if devices:
        return {"present": True, "source": "cuda bindings", "devices": devices}
    devices = _try(_gpus_from_nvidia_smi, [])
    if devices:
        return {"present": True, "source": "nvidia-smi", "devices": devices}
    return {"present": False, "source": None, "devices": []}


def _tensorrt_report() -> dict[str, Any]:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as e:
        return {"version": None, "importable": False, "error": f"{type(e).__name__}: {e}", "dla_cores": None}

    def dla_cores() -> int:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        return int(builder.num_DLA_cores) if builder is not None else 0

    return {"version": trt.__version__, "importable": True, "error": None, "dla_cores": _try(dla_cores)}


def _jetson_report() -> dict[str, Any]:
    model = _try(lambda: _JETSON_MODEL.read_bytes().rstrip(b"\0").decode().strip())
    release = _try(lambda: _TEGRA_RELEASE.read_text().splitlines()[0].strip())
    l4t = jetpack = None
    if release:
        # e.g. "# R36 (release), REVISION: 3.0, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
        major = release.lstrip("# ").split(" ", 1)[0].lstrip("R")
        revision = release.split("REVISION:", 1)[1].split(",", 1)[0].strip() if "REVISION:" in release else ""
        l4t = f"{major}.{revision}" if revision else major
        jetpack = _L4T_TO_JETPACK.get(major)
    is_jetson = bool(release) or bool(model and ("jetson" in model.lower() or "orin" in model.lower()))
    return {"is_jetson": is_jetson, "model": model, "l4t": l4t, "jetpack_major": jetpack}


def _driver_cuda_version() -> str | None:
    """The CUDA version the driver supports, from nvidia-smi's banner ("CUDA Version: 12.4")."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    result = subprocess.run([smi], capture_output=True, text=True, timeout=15, check=False)
    match = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", result.stdout)
    return match.group(1) if match else None


def tensorrt_extra_for(jetson: dict[str, Any], driver_cuda: str | None) -> tuple[str | None, str]:
    """(the install line for TensorRT on this machine, why): JetPack's own TensorRT on a Jetson, else the
    tensorrt-cu12 / -cu13 extra that matches the driver's CUDA major."""
    if jetson.get("is_jetson"):
        jetpack = jetson.get("jetpack_major")
        cuda = "cuda-python>=13,<14" if jetpack == "7" else "addunet-edge[jetson]"
        return (
            f"JetPack's TensorRT (a venv made with --system-site-packages), then pip install '{cuda}'",
            f"a Jetson{f' on JetPack {jetpack}' if jetpack else ''}: pip's TensorRT wheels are not built for it, "
            "and JetPack 6 is CUDA 12.6, JetPack 7 CUDA 13",
        )
    if driver_cuda is None:
        return None, "no NVIDIA driver answered (nvidia-smi): TensorRT needs an NVIDIA GPU"
    major = int(driver_cuda.split(".")[0])
    if major >= 13:
        return "pip install 'addunet-edge[tensorrt-cu13]'", f"the driver supports CUDA {driver_cuda}"
    if major == 12:
        return "pip install 'addunet-edge[tensorrt-cu12]'", f"the driver supports CUDA {driver_cuda}"
    return None, f"the driver supports CUDA {driver_cuda}; TensorRT 10.3+ wheels need a CUDA 12 or 13 driver"


def _bindings_report() -> dict[str, Any]:
    cuda_python = available("cuda.bindings.runtime") or available("cuda.cudart")
    return {"cuda-python": cuda_python, "pycuda": available("pycuda.driver")}


def _commands(report: dict[str, Any]) -> list[dict[str, Any]]:
    """For each command: can it run here, and what is missing (with how to install it)."""
    has = {
        "torch": report["torch"]["version"] is not None,
        "onnx": report["modules"]["onnx"],
        "onnxruntime": report["onnxruntime"]["version"] is not None,
        "tensorrt": report["tensorrt"]["importable"],
        "cuda-python": report["cuda_bindings"]["cuda-python"] or report["cuda_bindings"]["pycuda"],
        "NVIDIA GPU": report["gpu"]["present"],
        "cv2": report["modules"]["cv2"],
        "bm3d": report["modules"]["bm3d"],
    }
    fixes = {
        "torch": "pip install torch (CPU wheel: --index-url https://download.pytorch.org/whl/cpu)",
        "onnx": install_hint("onnx"),
        "onnxruntime": install_hint("onnxruntime"),
        "tensorrt": (
            "on Jetson it comes with JetPack (sudo apt install nvidia-tensorrt; make the venv with "
            "--system-site-packages); on a desktop GPU: " + install_hint("tensorrt")
        ),
        "cuda-python": install_hint("cuda"),
        "NVIDIA GPU": "an NVIDIA GPU or Jetson with its driver (nvidia-smi must list it)",
        "cv2": install_hint("cv2"),
        "bm3d": install_hint("bm3d"),
    }
    trt_needs = ("tensorrt", "cuda-python", "NVIDIA GPU")
    rows = [
        ("train", "CPU" if not has["NVIDIA GPU"] else "CPU or CUDA", ("torch",)),
        ("export", "PyTorch -> ONNX fp32", ("torch", "onnx")),
        ("calibrate", "fp16 / int8 ONNX (Q/DQ)", ("onnx", "onnxruntime")),
        *(("build", f"{p} --backend onnxruntime", ("onnx", "onnxruntime")) for p in ("fp32", "fp16", "int8")),
        *(("build", f"{p} --backend tensorrt", trt_needs) for p in ("fp32", "fp16", "int8")),
        ("validate", "checkpoint / .onnx", ("torch", "onnxruntime")),
        ("validate", ".plan", ("torch", *trt_needs)),
        ("bench", "checkpoint / .onnx", ("torch", "onnxruntime")),
        ("bench", ".plan", trt_needs),
        ("bench", "BM3D baseline", ("bm3d",)),
        ("run", "images (.onnx)", ("onnxruntime",)),
        ("run", "images (.plan)", trt_needs),
        ("run", "video / camera", ("onnxruntime", "cv2")),
    ]
    out = []
    for command, variant, needs in rows:
        missing = [n for n in needs if not has[n]]
        out.append(
            {
                "command": command,
                "variant": variant,
                "ok": not missing,
                "missing": missing,
                "install": [fixes[n] for n in missing],
            }
        )
    return out


def collect_report() -> dict[str, Any]:
    """Everything doctor knows about this machine, as plain JSON-ready data."""
    torch_report = _torch_report()
    report: dict[str, Any] = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": {
            "system": platform.system(),
            "machine": platform.machine(),
            "release": platform.release(),
        },
        "packages": package_versions(*_DISTRIBUTIONS),
        "torch": torch_report,
        "onnxruntime": _onnxruntime_report(),
        "tensorrt": _tensorrt_report(),
        "gpu": _gpu_report(torch_report),
        "jetson": _jetson_report(),
        "cuda_bindings": _bindings_report(),
        "driver_cuda": _try(_driver_cuda_version),
        "modules": {m: available(m) for m in ("onnx", "cv2", "bm3d", "modelopt")},
    }
    extra, why = tensorrt_extra_for(report["jetson"], report["driver_cuda"])
    report["tensorrt_install"] = {"command": extra, "why": why}
    report["commands"] = _commands(report)
    return report


def _mark(ok: bool) -> str:
    return "[green]yes[/]" if ok else "[red]no[/]"


def render_report(report: dict[str, Any], console: Console) -> None:
    """Print the report as rich tables: environment, GPU, and which commands run here."""
    env = Table(title="Environment", show_header=False)
    env.add_column("what", style="bold")
    env.add_column("value")
    env.add_row("Python", escape(f"{report['python']['version']} ({report['python']['executable']})"))
    env.add_row("Platform", f"{report['platform']['system']} {report['platform']['machine']}")
    torch_report = report["torch"]
    torch_text = torch_report["version"] or "[red]missing[/]"
    if torch_report["version"]:
        torch_text += f", CUDA {'available' if torch_report['cuda_available'] else 'not available'}"
    env.add_row("PyTorch", torch_text)
    ort = report["onnxruntime"]
    env.add_row(
        "ONNX Runtime",
        f"{ort['version']} ({', '.join(ort['providers'])})" if ort["version"] else "[red]missing[/]",
    )
    trt = report["tensorrt"]
    if trt["importable"]:
        dla = trt["dla_cores"]
        env.add_row("TensorRT", f"{trt['version']}, DLA cores: {dla if dla is not None else 'unknown'}")
    else:
        env.add_row("TensorRT", f"[red]missing[/] ({escape(str(trt['error']))})")
    bindings = report["cuda_bindings"]
    env.add_row("CUDA bindings", f"cuda-python {_mark(bindings['cuda-python'])}, pycuda {_mark(bindings['pycuda'])}")
    modules = report["modules"]
    env.add_row("Optional", ", ".join(f"{m} {_mark(ok)}" for m, ok in modules.items()))
    jetson = report["jetson"]
    if jetson["is_jetson"]:
        jp = f", likely JetPack {jetson['jetpack_major']}" if jetson["jetpack_major"] else ""
        env.add_row("Jetson", escape(f"{jetson['model'] or 'unknown model'}, L4T {jetson['l4t'] or '?'}{jp}"))
    else:
        env.add_row("Jetson", "no")
    gpu = report["gpu"]
    if gpu["present"]:
        gpus = escape("; ".join(f"{d['name']} (cc {d['compute_capability']})" for d in gpu["devices"]))
        env.add_row("GPU", f"{gpus} [dim](via {gpu['source']})[/]")
    else:
        env.add_row("GPU", "[red]none found[/] (torch.cuda, CUDA bindings and nvidia-smi all report none)")
    install = report["tensorrt_install"]
    env.add_row("TensorRT here", escape(f"{install['command'] or 'not available'} ({install['why']})"))
    console.print(env)

    commands = Table(title="Commands on this machine")
    for column in ("command", "variant", "runs here", "missing"):
        commands.add_column(column)
    how: dict[str, str] = {}
    for row in report["commands"]:
        commands.add_row(row["command"], row["variant"], _mark(row["ok"]), ", ".join(row["missing"]))
        how.update(zip(row["missing"], row["install"], strict=True))
    console.print(commands)
    if how:
        fixes = Table(title="How to get what is missing", show_header=False)
        fixes.add_column("missing", style="bold")
        fixes.add_column("how")
        for missing, text in how.items():
            fixes.add_row(missing, escape(text))
        console.print(fixes)
