"""Issue-10 table: plain (paper) vs int8-friendly (default) digits models, and what QAT adds.

Each variant is trained with the quickstart recipe (same epochs, same data), exported, and made int8 for both
targets three ways: plain percentile PTQ, the quickstart's settings (drift-budget fallback), and after a
quantization-aware fine-tune (`finetune --qat`). Everything is validated at sigma 25 on the held-out test
split (270 images). The denoise-only model at the same budget is the bar the multi-task model's
reconstruction is held to. With --speed, the cpu int8 artifacts are timed against PyTorch eager fp32 at
1x1x256x256 (run that part on a quiet machine).

    python benchmarks/int8_variants.py --out runs/int8_variants [--seeds 0,1] [--reuse runs/quickstart/model]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from addunet_edge.build import make_precision_onnx
from addunet_edge.checkpoint import read_checkpoint_meta
from addunet_edge.qat import QATConfig, finetune_qat
from addunet_edge.quickstart import INT8_BUDGET
from addunet_edge.recipes import train_recipe
from addunet_edge.validation import validate

TARGETS = ("cpu", "tensorrt")
# name: train_recipe overrides, and whether every seed is run (else the first only)
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "plain": ({"plain": True}, False),
    "friendly": ({}, True),
    "denoise-only": ({"denoise_only": True}, True),
}


def _int8_scores(checkpoint: Path, artifacts: dict[str, Path]) -> dict[str, Any]:
    """validate at sigma 25: the checkpoint's fp32 scores and every int8 artifact's drift and drop."""
    result = validate(checkpoint, list(artifacts.values()), sigmas=(25.0,), progress=False)
    ref = next(r for r in result.rows if r.backend == "torch")
    out: dict[str, Any] = {"fp32_psnr_db": ref.psnr_db, "accuracy": ref.accuracy}
    by_path = {Path(r.artifact).resolve(): r for r in result.rows if r.precision == "int8"}
    for tag, path in artifacts.items():
        row = by_path[path.resolve()]
        out[tag] = {"drift_db": row.psnr_drift_db, "acc_change_pt": row.accuracy_change_pt, "agreement": row.agreement}
    return out


def run_variant(out: Path, name: str, seed: int, reuse: Path | None, qat_steps: int) -> dict[str, Any]:
    overrides, _ = VARIANTS[name]
    tag = f"{name}-s{seed}"
    ckpt = out / tag
    if not (ckpt / "config.json").exists():
        if reuse is not None:
            shutil.copytree(reuse, ckpt)
        else:
            train_recipe(dataset="digits", out=ckpt, seed=seed, progress=False, **overrides)
    engines = out / f"{tag}-engines"
    arts: dict[str, Path] = {}
    classify = read_checkpoint_meta(ckpt)["model"]["num_classes"] > 0
    for target in TARGETS:
        arts[f"ptq-{target}"] = make_precision_onnx(ckpt, engines / "ptq", "int8", target=target, progress=False)
        try:
            arts[f"default-{target}"] = make_precision_onnx(
                ckpt,
                engines / "default",
                "int8",
                target=target,
                budget=INT8_BUDGET if classify else replace(INT8_BUDGET, max_acc_drop_pt=100.0),
                progress=False,
            )
        except Exception as e:  # a budget that cannot be met is a result too
            print(f"{tag} {target}: default int8 failed: {e}")
    row: dict[str, Any] = {"variant": name, "seed": seed, **_int8_scores(ckpt, arts)}
    for target in TARGETS if qat_steps and classify else ():
        qat_dir = out / f"{tag}-qat-{target}"
        if not (qat_dir / "qat_report.json").exists():
            finetune_qat(ckpt, qat_dir, QATConfig(target=target, steps=qat_steps, seed=seed), progress=False)
        qat_int8 = next(qat_dir.glob(f"*.int8.{target}.onnx"))
        scores = _int8_scores(qat_dir, {f"qat-{target}": qat_int8})
        row[f"qat-{target}"] = {**scores[f"qat-{target}"], "fp32_psnr_db": scores["fp32_psnr_db"]}
    return row


def _fmt(row: dict[str, Any], key: str, field: str, spec: str) -> str:
    cell = row.get(key)
    return "-" if not cell or cell.get(field) is None else format(cell[field], spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/int8_variants"))
    ap.add_argument("--seeds", default="0,1", help="seeds of the variants run on every seed")
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    ap.add_argument("--reuse", type=Path, default=None, help="a quickstart checkpoint to use as friendly-s0")
    ap.add_argument("--qat-steps", type=int, default=150, help="0 = no QAT rows")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    console = Console()
    results_path = args.out / "int8_variants.json"
    rows: list[dict[str, Any]] = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["variant"], r["seed"]) for r in rows}
    for name in names:
        for seed in seeds if VARIANTS[name][1] else seeds[:1]:
            if (name, seed) in done:
                continue
            reuse = args.reuse if (name, seed) == ("friendly", 0) else None
            row = run_variant(args.out, name, seed, reuse, args.qat_steps)
            console.print(row)
            rows.append(row)
            args.out.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(rows, indent=2, default=str))

    table = Table(title="digits, sigma 25, held-out test split (270 images); drift dB / accuracy drop pt")
    kinds = [f"{k} {t}" for k in ("ptq", "default", "qat") for t in TARGETS]
    for col in ("variant", "seed", "fp32 PSNR", "acc %", *kinds):
        table.add_column(col)
    for r in rows:
        acc = r["accuracy"]
        cells = [
            f"{_fmt(r, f'{k}-{t}', 'drift_db', '+.3f')} / {_fmt(r, f'{k}-{t}', 'acc_change_pt', '+.2f')}"
            for k in ("ptq", "default", "qat")
            for t in TARGETS
        ]
        table.add_row(
            r["variant"],
            str(r["seed"]),
            f"{r['fp32_psnr_db']:.2f}",
            "-" if acc is None or math.isnan(acc) else f"{100 * acc:.1f}",
            *cells,
        )
    console.print(table)


if __name__ == "__main__":
    main()
