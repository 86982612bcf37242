"""quickstart: the main job on bundled data — train, export, fp16, int8, (TensorRT), validate, bench."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule

from .artifacts import atomic_write_json
from .calibration.int8 import Int8Budget

# The int8 fallback's aim, at the worst of validate's noise levels on the validation split: 0.15 dB is half of
# validate's int8 budget (0.3 dB on the test split), about 0.08 dB at sigma 25; accuracy is held to
# validate's own budget (one image of 270 is 0.37 pt, so a tighter one chases single images). Measured on
# the seed-0 model (2-core CPU): plain int8 cpu drifted -0.34 / -0.21 / -0.06 dB at sigma 15 / 25 / 50; the
# last decoder conv and the image head share the quantized tensor that carries the image, so neither alone
# helps (-0.32) and both float give -0.14 / -0.08 / -0.00. The old leave-one-out ranking could not find that
# pair; the "only" ranking does. When the aim is missed within the float cap, the least harmful model is kept
# and validate judges it.
INT8_BUDGET = Int8Budget(max_psnr_drift_db=0.15, max_acc_drop_pt=1.0, on_miss="keep_best")


@dataclass
class QuickstartResult:
    checkpoint: Path
    artifacts: dict[str, Path] = field(default_factory=dict)
    validation: Any = None
    bench: Any = None
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    weights_sha256: str = ""
    test: dict[str, Any] = field(default_factory=dict)  # the training summary's test-split figures


def quickstart(
    out: str | Path,
    *,
    epochs: int | None = None,
    seed: int = 0,
    threads: int = 2,
    bench_iterations: int = 20,
    bench_size: int = 256,
    console: Console | None = None,
    resume: bool = False,
) -> QuickstartResult:
    """Run the whole pipeline on scikit-learn's digits; everything lands under `out`.

    Training runs on `threads` torch threads: the thread count changes the order of float sums and so the
    weights, and pinning it makes the same seed give the same weights hash on any machine with that many
    cores and the same CPU kind.
    """
    out = Path(out)
    console = console or Console()
    result = QuickstartResult(checkpoint=out / "model")
    steps = (
        ("train", lambda: _train(result, epochs, seed, threads, resume, console)),
        ("export+quantize", lambda: _variants(result, out / "engines", console)),
        ("plans", lambda: _plans(result, out / "engines", console)),
        ("validate", lambda: _validate(result, out / "report", console)),
        ("bench", lambda: _bench(result, out / "bench", threads, bench_size, bench_iterations, console)),
    )
    for name, step in steps:
        start = time.perf_counter()
        step()
        if name != "plans":
            result.timings_s[name] = time.perf_counter() - start
    atomic_write_json(
        out / "quickstart.json",
        {
            "checkpoint": str(result.checkpoint),
            "seed": seed,
            "train_threads": threads,
            "weights_sha256": result.weights_sha256,
            "artifacts": {k: str(v) for k, v in result.artifacts.items()},
            "test": result.test,
            "timings_s": result.timings_s,
            "notes": result.notes,
            "validation_passed": getattr(result.validation, "passed", None),
        },
    )
    return result


def _train(
    result: QuickstartResult, epochs: int | None, seed: int, threads: int, resume: bool, console: Console
) -> None:
    import torch

    from .artifacts import sha256_file
    from .checkpoint import WEIGHTS
    from .recipes import train_recipe

    console.print(Rule(f"1/5 train AddUNet on digits (denoise + classify, sigma 25, seed {seed}, {threads} threads)"))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        summary = train_recipe(dataset="digits", out=result.checkpoint, epochs=epochs, seed=seed, resume=resume)
    finally:
        torch.set_num_threads(torch_threads)
    result.weights_sha256 = sha256_file(result.checkpoint / WEIGHTS)
    result.test = test = summary["test"]
    console.print(
        f"test PSNR {test['psnr_db']:.2f} dB (noisy input {test['noisy_psnr_db']:.2f} dB), "
        f"accuracy {100 * test.get('accuracy', float('nan')):.1f} %; weights sha256 {result.weights_sha256[:16]}"
    )


def _variants(result: QuickstartResult, engines: Path, console: Console) -> None:
    from .build import BuildResult, make_precision_onnx

    console.print(Rule("2/5 export to ONNX and make fp16 and int8 variants"))
    arts, ckpt = result.artifacts, result.checkpoint
    arts["fp32"] = make_precision_onnx(ckpt, engines, "fp32")
    arts["fp16"] = make_precision_onnx(ckpt, engines, "fp16")
    # cpu: unsigned activations, fast on ONNX Runtime x86. tensorrt: the symmetric flavour a TensorRT plan
    # needs, validated here for accuracy. Both keep the fewest sensitive nodes in float for INT8_BUDGET.
    for target in ("cpu", "tensorrt"):
        made = BuildResult(backend="onnxruntime", precision="int8")
        arts[f"int8-{target}"] = make_precision_onnx(
            ckpt, engines, "int8", target=target, budget=INT8_BUDGET, result=made
        )
        line = made.calibration.summary()
        console.print(("" if made.calibration.met_budget else "[yellow]note:[/] ") + escape(line))
        if not made.calibration.met_budget:
            result.notes.append(line)


def _plans(result: QuickstartResult, engines: Path, console: Console) -> None:
    from .build import DEFAULT_PROFILE_BATCH, DEFAULT_PROFILE_SIZES, resolve_backend

    backend, note = resolve_backend("auto")
    if backend != "tensorrt":
        console.print(Rule("3/5 TensorRT plans: skipped"))
        console.print(f"[yellow]note:[/] {note}")
        result.notes.append(str(note))
        return
    from .engines.plan import BuildProfile
    from .engines.trt_build import build_plan

    console.print(Rule("3/5 build TensorRT plans"))
    profile = BuildProfile.parse(DEFAULT_PROFILE_BATCH, DEFAULT_PROFILE_SIZES)
    for tag, precision in (("fp16", "fp16"), ("int8-tensorrt", "int8")):
        result.artifacts[f"plan-{precision}"] = build_plan(
            result.artifacts[tag], engines, precision=precision, profile=profile
        )


def _validate(result: QuickstartResult, report_dir: Path, console: Console) -> None:
    from .reports import rich_table, write_reports
    from .validation import validate

    console.print(Rule("4/5 validate every artifact against PyTorch (sigma 15, 25, 50)"))
    result.validation = validate(result.checkpoint, list(result.artifacts.values()), sigmas=(15.0, 25.0, 50.0))
    write_reports(result.validation, report_dir)
    console.print(rich_table(result.validation))


def _bench(
    result: QuickstartResult, bench_dir: Path, threads: int, size: int, iterations: int, console: Console
) -> None:
    from .benchmarking import bench, render_table, write_reports

    console.print(Rule(f"5/5 bench at 1x1x{size}x{size}, {threads} threads, PyTorch eager fp32 as the baseline"))
    arts = result.artifacts
    result.bench = bench(
        [arts["fp32"], arts["fp16"], arts["int8-cpu"], arts["int8-tensorrt"]],
        baseline=result.checkpoint,
        batches=(1,),
        sizes=((size, size),),
        threads=threads,
        iterations=iterations,
    )
    write_reports(
        result.bench,
        json=bench_dir / "bench.json",
        csv=bench_dir / "bench.csv",
        markdown=bench_dir / "bench.md",
        plot=bench_dir / "latency.png",
    )
    console.print(render_table(result.bench, width=console.width))


def render_summary(result: QuickstartResult, out: Path, console: Console) -> None:
    """Where everything is, and the figures a user looks at first."""
    from rich.table import Table

    console.print(Rule("quickstart done"))
    table = Table(show_header=False, box=None)
    table.add_row("checkpoint", f"{result.checkpoint} (weights sha256 {result.weights_sha256[:16]})")
    for tag, path in result.artifacts.items():
        table.add_row(tag, str(path))
    table.add_row("validation", f"{out / 'report'} (report.md, validation.json, crops.png, drift.png)")
    table.add_row("benchmark", f"{out / 'bench'} (bench.md, bench.json, bench.csv, latency.png)")
    for step, seconds in result.timings_s.items():
        table.add_row(f"time: {step}", f"{seconds:.0f} s")
    console.print(table)
    if result.validation is not None:
        verdict = (
            "[green]every artifact within its drift budget[/]"
            if result.validation.passed
            else ("[red]some artifact broke its drift budget (see the table)[/]")
        )
        console.print(verdict)
