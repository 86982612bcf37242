"""`doctor --self-test`: the first thing to run on a Jetson or GPU box. Trains a small model, builds its fp16 and
int8 TensorRT plans, validates them against PyTorch, benches them against PyTorch eager on the same GPU, reads
back each plan's layer precision and writes one report; where TensorRT or a GPU is missing, it says exactly
what and how to get it, and stops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from .artifacts import atomic_write_json, atomic_write_text
from .errors import MissingDependencyError
from .metrics import fmt_signed

# Small enough to train in well under a minute on a Jetson's CPU, big enough (width 16) that ModelOpt puts
# its convolutions in int8; the profile covers the digits' 32x32 (validate) and 256x256 (bench).
_MODEL = {"width": 16, "depth": 3}
_EPOCHS = 3
_PROFILE = ("1,1,8", "32x32,256x256,512x512")


def missing_for_self_test(report: dict[str, Any]) -> list[str]:
    """What this machine lacks for the self-test, each with how to get it (from doctor's report)."""
    install = report.get("tensorrt_install", {})
    missing = []
    if not report["gpu"]["present"]:
        missing.append("an NVIDIA GPU or Jetson with its driver (nvidia-smi, or tegrastats on a Jetson, must work)")
    if not report["tensorrt"]["importable"]:
        how = install.get("command") or "an NVIDIA GPU first"
        missing.append(f"TensorRT ({report['tensorrt']['error']}): {how}")
    bindings = report["cuda_bindings"]
    if not (bindings["cuda-python"] or bindings["pycuda"]):
        missing.append("CUDA Python bindings (cuda-python, or pycuda where a Jetson image has it)")
    return missing


def self_test(out: Path, report: dict[str, Any], console: Console, device: str = "cuda") -> dict[str, Any]:
    """Run the whole check into `out` (report.json, report.md) and return the report; MissingDependencyError
    (exit code 4) naming everything that is missing, before anything runs."""
    missing = missing_for_self_test(report)
    if missing:
        raise MissingDependencyError("the self-test needs " + "; ".join(missing))
    from .benchmarking import bench
    from .build import make_precision_onnx
    from .engines.plan import BuildProfile, PlanLayers, format_summary
    from .engines.trt_build import build_plan
    from .recipes import train_recipe
    from .validation import validate

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ckpt, engines = out / "model", out / "engines"
    console.print("self-test 1/4: train a small AddUNet on digits")
    train_recipe(dataset="digits", out=ckpt, epochs=_EPOCHS, progress=False, **_MODEL)  # type: ignore[arg-type]
    console.print("self-test 2/4: fp16 and int8 (tensorrt) ONNX, then their TensorRT plans")
    profile = BuildProfile.parse(*_PROFILE)
    plans = {
        precision: build_plan(
            make_precision_onnx(ckpt, engines, precision, target="tensorrt", progress=False),
            engines,
            precision=precision,
            profile=profile,
        )
        for precision in ("fp16", "int8")
    }
    console.print("self-test 3/4: validate the plans against PyTorch")
    validation = validate(ckpt, list(plans.values()), progress=False, engine_options={"torch": {"device": device}})
    console.print("self-test 4/4: bench the plans against PyTorch eager on the GPU")
    timing = bench(list(plans.values()), baseline=ckpt, sizes=((256, 256),), device=device, progress=False)
    from .artifacts import read_manifest

    layers = {p: PlanLayers.from_dict((read_manifest(path) or {}).get("layers", {})) for p, path in plans.items()}
    result = {
        "passed": validation.passed,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {k: report[k] for k in ("gpu", "tensorrt", "jetson", "driver_cuda")},
        "plans": {p: str(path) for p, path in plans.items()},
        "layers": {p: layer.summary() for p, layer in layers.items()},
        "validation": validation.to_dict(),
        "bench": timing.to_dict(),
    }
    atomic_write_json(out / "report.json", result)
    lines = [
        "# addunet-edge self-test",
        "",
        f"- verdict: {'PASS' if validation.passed else 'FAIL'} (every plan within its drift budget against PyTorch)",
        f"- GPU: {report['gpu']['devices']}; TensorRT {report['tensorrt']['version']}",
        *(f"- {p} plan: {format_summary(layer.summary())}" for p, layer in layers.items()),
        "",
        "| artifact | sigma | drift dB | accuracy change pt | passed |",
        "|---|---:|---:|---:|---|",
        *(
            f"| {Path(r.artifact).name} | {r.sigma:g} | {fmt_signed(r.psnr_drift_db, '.4f')} | "
            f"{fmt_signed(r.accuracy_change_pt, '.2f')} | {r.passed} |"
            for r in validation.rows
            if not r.reference
        ),
        "",
        "| engine | timing | median ms at 1x256x256 | x PyTorch eager |",
        "|---|---|---:|---:|",
        *(
            f"| {r.label} | {r.timing} | {r.latency_ms_median:.2f} | {r.speedup_vs_torch or 1.0:.2f} |"
            for r in timing.rows
        ),
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return result
