"""Issue-10 head study: what the classification loss costs the reconstruction, per classifier head design.

Trains the digits quickstart recipe (same epochs, lambda, data) with each head design and the denoise-only
model at the same budget, and prints test PSNR and accuracy at sigma 25. The bar: reconstruction within
0.3 dB of denoise-only training with accuracy of 98 % or more.

    python benchmarks/head_ab.py --out runs/head_ab [--seeds 0,1] [--only conv-detach,conv]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from addunet_edge.checkpoint import read_checkpoint_meta
from addunet_edge.recipes import train_recipe

VARIANTS: dict[str, dict[str, Any]] = {
    "denoise-only": {"denoise_only": True},
    "denoise-only, direct output": {"denoise_only": True, "residual_output": False},
    "limited (projection + GAP + linear)": {},
    "limited, detached": {"head_detach": True},
    "conv": {"head": "conv"},
    "conv, detached": {"head": "conv", "head_detach": True},
    "limited, lambda 0.03": {"cls_weight": 0.03},
    # Direct output: the trunk carries the clean image, not the noise, which the classifier also wants.
    "limited, direct output": {"residual_output": False},
    "conv, detached, direct output": {"head": "conv", "head_detach": True, "residual_output": False},
}


def _slug(name: str) -> str:
    return name.split(" (")[0].replace(", ", "-").replace(" ", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/head_ab"))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--only", default="", help="comma-separated variant slugs (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = [s for s in args.only.split(",") if s]
    console = Console()
    rows = []
    for name, overrides in VARIANTS.items():
        if wanted and _slug(name) not in wanted:
            continue
        for seed in (int(s) for s in args.seeds.split(",")):
            ckpt = args.out / f"{_slug(name)}-s{seed}"
            if not (ckpt / "config.json").exists():
                train_recipe(dataset="digits", out=ckpt, seed=seed, progress=False, **overrides)
            test = read_checkpoint_meta(ckpt)["metrics"]["test"]
            row = {"variant": name, "seed": seed, "psnr_db": test["psnr_db"], "accuracy": test.get("accuracy")}
            console.print(row)
            rows.append(row)
    table = Table(title="digits, sigma 25, test split: PSNR dB / accuracy %")
    for col in ("variant", "seed", "PSNR dB", "accuracy %"):
        table.add_column(col)
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        table.add_row(r["variant"], str(r["seed"]), f"{r['psnr_db']:.2f}", acc)
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "head_ab.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
