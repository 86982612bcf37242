"""Reports of a `compare` result: the rich summary table, the BM3D verdict, Markdown, the crops figure and the
files written for --report (compare.json, compare.md, crops.png)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .artifacts import atomic_write_json, atomic_write_text
from .classical_denoisers import BASELINE_LABELS, tv_weight
from .compare import CompareResult
from .engines.ensemble import LABEL as ENSEMBLE_LABEL
from .plotting import pyplot, save_figure

if TYPE_CHECKING:
    from rich.table import Table

JSON_NAME = "compare.json"
MARKDOWN_NAME = "compare.md"
FIGURE_NAME = "crops.png"
ENSEMBLE_NOTE = (
    f"Methods named {ENSEMBLE_LABEL} are the engine above them run as a test-time self-ensemble: the 8 rotations "
    "and mirrors of the noisy image denoised, turned back and averaged; their time per image counts all 8."
)


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def summary_table(result: CompareResult) -> Table:
    """Rows: methods; columns: PSNR / SSIM per sigma (mean over images) and time per image; best in bold."""
    from rich.markup import escape
    from rich.table import Table

    shape = ", ".join(f"{k} {v[1]}x{v[2]}" for k, v in result.shapes.items())
    table = Table(title=f"compare: mean over {shape}; seed {result.seed}")
    table.add_column("method", style="bold", no_wrap=True)
    for s in result.sigmas:
        table.add_column(f"σ={s:g}\nPSNR dB / SSIM", justify="right", no_wrap=True)
    table.add_column("s/img", justify="right", no_wrap=True)
    for m in result.methods:
        row = [escape(m.name)]
        for s in result.sigmas:
            parts = []
            for metric, spec in (("psnr_db", ".2f"), ("ssim", ".4f")):
                text = _fmt(result.mean(m.name, s, metric), spec)
                parts.append(f"[bold green]{text}[/]" if result.best(s, metric) == m.name else text)
            row.append(" / ".join(parts))
        times = [c.seconds for c in result.cells if c.method == m.name]
        row.append("-" if m.kind == "noisy" else _fmt(float(np.mean(times)) if times else math.nan, ".3f"))
        table.add_row(*row)
    return table


def bm3d_verdict_lines(result: CompareResult) -> list[str]:
    """One line per image and sigma (does the checkpoint beat BM3D?), then the count."""
    rows = result.beats_bm3d()
    if not rows:
        why = result.skipped.get(BASELINE_LABELS["bm3d"])
        if why:
            return [f"BM3D was skipped ({why}), so the model was not compared with it."]
        return ["No BM3D comparison (BM3D or the checkpoint was not run)."]
    lines = [
        f"{r['image']}, sigma {r['sigma']:g}: model {r['model_psnr_db']:.2f} dB vs BM3D "
        f"{r['bm3d_psnr_db']:.2f} dB -> {'beats' if r['beats_bm3d'] else 'does NOT beat'} BM3D "
        f"({r['margin_db']:+.2f} dB)"
        for r in rows
    ]
    wins = sum(r["beats_bm3d"] for r in rows)
    return [*lines, f"beats BM3D in {wins} of {len(rows)} comparisons"]


def markdown_report(result: CompareResult, figure: str | None = FIGURE_NAME) -> str:
    lines = [
        "# Denoiser comparison",
        "",
        f"Images: {', '.join(f'{k} ({v[1]}x{v[2]}, {v[0]} ch)' for k, v in result.shapes.items())}; "
        f"sigmas {', '.join(f'{s:g}' for s in result.sigmas)} (0-255 scale); noise seed {result.seed}. "
        "Every method sees the same noisy image; outputs are clipped to [0, 1]. Best per column in bold.",
        "",
    ]
    if result.self_ensemble:
        lines += [ENSEMBLE_NOTE, ""]
    lines += ["## Mean over images", ""]
    header = ["method"] + [f"σ={s:g} PSNR dB / SSIM" for s in result.sigmas] + ["s / image"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in result.methods:
        row = [m.name]
        for s in result.sigmas:
            p = _fmt(result.mean(m.name, s, "psnr_db"), ".2f")
            q = _fmt(result.mean(m.name, s, "ssim"), ".4f")
            p = f"**{p}**" if result.best(s, "psnr_db") == m.name else p
            q = f"**{q}**" if result.best(s, "ssim") == m.name else q
            row.append(f"{p} / {q}")
        times = [c.seconds for c in result.cells if c.method == m.name]
        row.append("-" if m.kind == "noisy" or not times else f"{np.mean(times):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Per image (PSNR dB / SSIM)", ""]
    header = ["method", "image"] + [f"σ={s:g}" for s in result.sigmas]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in result.methods:
        for image in result.images:
            row = [m.name, image]
            for s in result.sigmas:
                c = result.cell(m.name, image, s)
                row.append("-" if c is None else f"{_fmt(c.psnr_db, '.2f')} / {_fmt(c.ssim, '.4f')}")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Against BM3D", ""] + [f"- {line}" for line in bm3d_verdict_lines(result)]
    if result.skipped:
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in result.skipped.items()]
    lines += [
        "",
        "## Baseline settings",
        "",
        "- BM3D: `bm3d` package, sigma_psd = sigma / 255 (bm3d_rgb for colour).",
        "- NL-means: scikit-image, patch 5, distance 6, h = 0.8 sigma, fast mode, true sigma.",
        "- TV: Chambolle, weight by sigma "
        + ", ".join(f"{s:g}: {tv_weight(s):.3f}" for s in result.sigmas)
        + " (tuned on training photos), 200 iterations.",
        "- Wavelet: BayesShrink, soft thresholds, true sigma (YCbCr for colour).",
    ]
    if figure:
        lines += ["", f"![crops]({figure})"]
    return "\n".join(lines) + "\n"


def crops_figure(result: CompareResult, path: str | Path) -> Path:
    """PNG: one row per sigma; clean, noisy and each method's output on the detail window of the figure
    image. Titles carry the whole-image PSNR (the tables' number); the best of a row is bold."""
    plt = pyplot()

    image, (_, _, size) = result.figure_image, result.window
    methods = [m.name for m in result.methods]
    columns = ["clean", *methods]
    rows = len(result.sigmas)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.3 * len(columns), 2.95 * rows), squeeze=False)
    cmap = "gray" if result.in_channels == 1 else None
    for r, sigma in enumerate(result.sigmas):
        scored = [c.psnr_db for m in result.methods[1:] if (c := result.cell(m.name, image, sigma)) is not None]
        top = max(scored) if scored else math.inf
        for k, name in enumerate(columns):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            tile = result.crops.get((name, sigma))
            if tile is None:  # a method that failed on this image
                ax.set_title(_short(name), fontsize=8.5)
                continue
            ax.imshow(tile[0] if tile.shape[0] == 1 else tile.transpose(1, 2, 0), cmap=cmap, vmin=0, vmax=1)
            c = result.cell(name, image, sigma)
            if name == "clean":
                title, bold = f"clean ({image})\nσ = {sigma:g}", False
            else:
                title = f"{_short(name)}\n{c.psnr_db:.2f} dB" if c else _short(name)
                bold = c is not None and k > 1 and c.psnr_db >= top
            ax.set_title(title, fontsize=8.5, fontweight="bold" if bold else "normal")
    fig.suptitle(f"{image}: {size}x{size} detail crop; titles give whole-image PSNR (best in bold)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def write_reports(result: CompareResult, folder: str | Path) -> dict[str, Path]:
    """compare.json, compare.md and crops.png in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / JSON_NAME, "markdown": folder / MARKDOWN_NAME, "figure": folder / FIGURE_NAME}
    atomic_write_json(paths["json"], result.to_dict())
    crops_figure(result, paths["figure"])
    atomic_write_text(paths["markdown"], markdown_report(result, FIGURE_NAME))
    return paths
