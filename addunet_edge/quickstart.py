"""quickstart: the main job on bundled data — train, export, fp16, int8, (TensorRT), validate, bench."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from .artifacts import atomic_write_json
from .errors import BudgetError

# Measured at sigma 25: the noise-predicting digits model drifted -0.44 dB (cpu) / -0.48 dB (tensorrt) with
# plain percentile int8; at 0.08 dB the fallback kept two nodes float (image head, last decoder conv) and the
# test split drifted -0.05 / -0.07 dB (0.15 dB had left tensorrt at -0.137). The clean-image-predicting model
# (the recipe now) meets 0.08 dB on tensorrt with the image head float (-0.05 dB on test); on cpu not within
# the float cap, so the plain int8 model (-0.15 dB) is kept with a note. No accuracy drop is allowed on val.
INT8_DRIFT_DB = 0.08
INT8_ACC_DROP_PT = 0.3


@dataclass
class QuickstartResult:
    checkpoint: Path
    artifacts: dict[str, Path] = field(default_factory=dict)
    validation: Any = None
    bench: Any = None
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def quickstart(
    out: str | Path,
    *,
    epochs: int | None = None,
    threads: int = 2,
    bench_iterations: int = 20,
    bench_size: int = 256,
    console: Console | None = None,
    resume: bool = False,
) -> QuickstartResult:
    """Run the whole pipeline on scikit-learn's digits; everything lands under `out`."""
    from .build import make_precision_onnx, resolve_backend
    from .recipes import train_recipe

    console = console or Console()
    out = Path(out)
    ckpt = out / "model"
    engines = out / "engines"
    result = QuickstartResult(checkpoint=ckpt)
    clock = time.perf_counter

    console.print(Rule("1/5 train AddUNet on digits (denoise + classify, sigma 25)"))
    t = clock()
    summary = train_recipe(dataset="digits", out=ckpt, epochs=epochs, resume=resume)
    result.timings_s["train"] = clock() - t
    test = summary["test"]
    console.print(
        f"test PSNR {test['psnr_db']:.2f} dB (noisy input {test['noisy_psnr_db']:.2f} dB), "
        f"accuracy {100 * test.get('accuracy', float('nan')):.1f} %"
    )

    console.print(Rule("2/5 export to ONNX and make fp16 and int8 variants"))
    t = clock()
    arts = result.artifacts
    arts["fp32"] = make_precision_onnx(ckpt, engines, "fp32")
    arts["fp16"] = make_precision_onnx(ckpt, engines, "fp16")
    # cpu: unsigned activations, fast on ONNX Runtime x86. tensorrt: the symmetric flavour a TensorRT plan
    # needs, validated here for accuracy. Both are held to a drift budget at sigma 25 tighter than
    # validate's int8 default (the other sigmas drift more), keeping the fewest sensitive nodes in float.
    for target in ("cpu", "tensorrt"):
        try:
            arts[f"int8-{target}"] = make_precision_onnx(
                ckpt, engines, "int8", target=target, max_psnr_drift_db=INT8_DRIFT_DB, max_acc_drop_pt=INT8_ACC_DROP_PT
            )
        except BudgetError as e:
            # Keep going with the plain int8 model: validate then shows, and judges, how far it drifts.
            note = f"int8 {target}: {e} Kept the plain int8 model (every node quantized)."
            console.print(f"[yellow]note:[/] {note}")
            result.notes.append(note)
            arts[f"int8-{target}"] = make_precision_onnx(ckpt, engines, "int8", target=target)
    result.timings_s["export+quantize"] = clock() - t

    backend, note = resolve_backend("auto")
    if backend == "tensorrt":
        console.print(Rule("3/5 build TensorRT plans"))
        from .engines.trt_build import BuildProfile, build_plan

        profile = BuildProfile.parse("1,1,8", "32x32,256x256,1024x1024")
        for tag, precision in (("fp16", "fp16"), ("int8-tensorrt", "int8")):
            arts[f"plan-{precision}"] = build_plan(arts[tag], engines, precision=precision, profile=profile)
    else:
        console.print(Rule("3/5 TensorRT plans: skipped"))
        console.print(f"[yellow]note:[/] {note}")
        result.notes.append(str(note))

    console.print(Rule("4/5 validate every artifact against PyTorch (sigma 15, 25, 50)"))
    from .reports import rich_table, write_reports
    from .validation import validate

    t = clock()
    result.validation = validate(ckpt, list(arts.values()), sigmas=(15.0, 25.0, 50.0))
    write_reports(result.validation, out / "report")
    console.print(rich_table(result.validation))
    result.timings_s["validate"] = clock() - t

    console.print(
        Rule(f"5/5 bench at 1x1x{bench_size}x{bench_size}, {threads} threads, PyTorch eager fp32 as the baseline")
    )
    from .benchmarking import bench
    from .benchmarking import write_reports as write_bench_reports

    t = clock()
    result.bench = bench(
        [arts["fp32"], arts["fp16"], arts["int8-cpu"], arts["int8-tensorrt"]],
        baseline=ckpt,
        batches=(1,),
        sizes=((bench_size, bench_size),),
        threads=threads,
        iterations=bench_iterations,
    )
    write_bench_reports(
        result.bench,
        json=out / "bench" / "bench.json",
        csv=out / "bench" / "bench.csv",
        markdown=out / "bench" / "bench.md",
        plot=out / "bench" / "latency.png",
    )
    result.timings_s["bench"] = clock() - t
    atomic_write_json(
        out / "quickstart.json",
        {
            "checkpoint": str(ckpt),
            "artifacts": {k: str(v) for k, v in arts.items()},
            "test": test,
            "timings_s": result.timings_s,
            "notes": result.notes,
            "validation_passed": getattr(result.validation, "passed", None),
        },
    )
    return result


def render_summary(result: QuickstartResult, out: Path, console: Console) -> None:
    """Where everything is, and the figures a user looks at first."""
    from rich.table import Table

    console.print(Rule("quickstart done"))
    table = Table(show_header=False, box=None)
    table.add_row("checkpoint", str(result.checkpoint))
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
