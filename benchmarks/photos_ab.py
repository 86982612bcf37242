"""Issue-8 A/B: which photos-recipe settings give the best denoiser for the same wall-clock budget.

Each variant is the default photos recipe with one or two settings changed, trained for the same number of
minutes with the same seed, then scored on scikit-image's camera() (held out) at sigma 15, 25 and 50 with
the seeded noise `compare` uses. Run it on a quiet machine, or with a constant load, since the budget is
wall-clock time.

    python benchmarks/photos_ab.py --out runs/photos_ab --minutes 5 [--threads 1] [--only base,nonorm]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from addunet_edge.compare import compare
from addunet_edge.recipes import train_recipe

# name: train_recipe overrides on top of the default photos recipe
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "b16": {"batch_size": 16},
    "b8": {"batch_size": 8},
    "b16-nonorm": {"batch_size": 16, "norm": "none"},
    "b16-w32": {"batch_size": 16, "width": 32},
    "nonorm": {"norm": "none"},
    "nobound": {"bound": 0.0},
    "w32": {"width": 32},
    "full32": {"width": 32, "resampling": "none"},
    "lr4e-3": {"lr": 4e-3},
    "full32-nonorm": {"width": 32, "resampling": "none", "norm": "none"},
    # issue 20: bilinear up-sampling (no staircase), and the trunk at half resolution on 4 channels (FFDNet)
    "bilinear": {"upsampling": "bilinear"},
    "u2-w64-bilinear": {"unshuffle": 2, "width": 64, "upsampling": "bilinear"},
    "u2-w96": {"unshuffle": 2, "width": 96},
    "u2-w96-bilinear": {"unshuffle": 2, "width": 96, "upsampling": "bilinear"},
    "bilinear-nonorm": {"upsampling": "bilinear", "norm": "none"},
    "bilinear-b32": {"upsampling": "bilinear", "batch_size": 32},
    "bilinear-lr4e-3": {"upsampling": "bilinear", "lr": 4e-3},
}
SIGMAS = (15.0, 25.0, 50.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/photos_ab"))
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    console = Console()
    rows = []
    for name in names:
        ckpt = args.out / name
        t0 = time.perf_counter()
        summary: dict[str, Any] = {}
        if not (ckpt / "config.json").exists():
            summary = train_recipe(
                dataset="photos", out=ckpt, minutes=args.minutes, seed=0, progress=False, **VARIANTS[name]
            )
        train_s = time.perf_counter() - t0
        result = compare(ckpt, images=("camera",), sigmas=SIGMAS, baselines=(), progress=False)
        ours = result.checkpoint_method
        row = {
            "variant": name,
            "overrides": VARIANTS[name],
            "train_wall_s": round(train_s, 1),
            "epochs": summary.get("epochs"),
            **{f"camera_psnr_s{s:g}": result.mean(ours, s, "psnr_db") for s in SIGMAS},
            **{f"camera_ssim_s{s:g}": result.mean(ours, s, "ssim") for s in SIGMAS},
        }
        rows.append(row)
        console.print(row)
        (args.out / f"{name}.json").write_text(json.dumps(row, indent=2))
    table = Table(title=f"photos recipe A/B, {args.minutes:g} min each, camera() PSNR dB")
    for col in ("variant", "overrides", *(f"sigma {s:g}" for s in SIGMAS)):
        table.add_column(col)
    for r in rows:
        table.add_row(r["variant"], str(r["overrides"]), *(f"{r[f'camera_psnr_s{s:g}']:.2f}" for s in SIGMAS))
    console.print(table)


if __name__ == "__main__":
    main()
