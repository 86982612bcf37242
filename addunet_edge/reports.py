"""Validation reports: a rich table, JSON, Markdown and PNG figures (matplotlib, Agg, imported lazily)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .artifacts import atomic_write_json, atomic_write_text
from .engines.ensemble import LABEL as ENSEMBLE_LABEL
from .plotting import pyplot, save_figure

if TYPE_CHECKING:
    from rich.table import Table

    from .validation_results import ArtifactSummary, Row, ValidationResult

JSON_NAME = "validation.json"
MARKDOWN_NAME = "report.md"
CROPS_NAME = "crops.png"
DRIFT_NAME = "drift.png"


def _fmt(value: float | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "identical" if value > 0 else "-inf"
    return format(value, spec)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"


def _suffix(record: ArtifactSummary | Row) -> str:
    return f" {ENSEMBLE_LABEL}" if record.self_ensemble else ""


def _label(record: ArtifactSummary | Row) -> str:
    """Short display name: 'model.int8.onnx', 'tiny (PyTorch)', with a self-ensemble 'model.int8.onnx +x8'."""
    return Path(record.artifact).name + (" (PyTorch)" if record.reference else "") + _suffix(record)


def _axis_label(summary: ArtifactSummary) -> str:
    """An artifact's name in a figure: 'model.int8.onnx +x8' over 'onnxruntime, int8'."""
    return f"{_label(summary)}\n{summary.backend}, {summary.precision}"


_COLUMNS = (
    ("artifact", "left"),
    ("backend", "left"),
    ("prec.", "left"),
    ("σ", "right"),
    ("PSNR dB", "right"),
    ("SSIM", "right"),
    ("drift dB", "right"),
    ("fidelity dB", "right"),
    ("max |err|", "right"),
    ("acc %", "right"),
    ("acc Δ pt", "right"),
    ("agree %", "right"),
    ("budget", "left"),
    ("status", "left"),
)


def _table_rows(result: ValidationResult) -> list[tuple[list[str], bool | None]]:
    """Cells of every row, plus pass (True), fail (False) or reference (None)."""
    out = []
    for r in result.rows:
        b = r.budget
        budget = "-" if b is None else f"-{b.max_psnr_drift_db:g} dB / -{b.max_acc_drop_pt:g} pt"
        status = None if r.reference else r.passed
        cells = [
            _label(r),
            r.backend,
            r.precision + (f"/{r.target}" if r.target else ""),
            f"{r.sigma:g}",
            _fmt(r.psnr_db, ".2f"),
            _fmt(r.ssim, ".4f"),
            _fmt(r.psnr_drift_db, "+.4f"),
            _fmt(r.fidelity_psnr_db, ".1f"),
            _fmt(r.max_abs_error, ".2e"),
            _pct(r.accuracy),
            _fmt(r.accuracy_change_pt, "+.2f"),
            _pct(r.agreement),
            budget,
            "reference" if status is None else ("PASS" if status else "FAIL"),
        ]
        out.append((cells, status))
    return out


def ensemble_lines(result: ValidationResult) -> list[str]:
    """With a self-ensemble: what it is, then per sigma the reference's PSNR, accuracy and time with and without."""
    e = result.self_ensemble
    if not e:
        return []
    lines = [
        f"every engine, the PyTorch reference included, ran as a test-time self-ensemble ({e['label']}: the "
        f"{e['transforms']} rotations and mirrors of each image, denoised, turned back and averaged, logits too); "
        "drift compares ensemble with ensemble"
    ]
    for sigma, r in e["reference"].items():
        acc = (
            ""
            if math.isnan(r["accuracy"])
            else f", accuracy {_pct(r['accuracy'])} % vs {_pct(r['accuracy_without'])} %"
        )
        lines.append(
            f"σ={sigma}: PyTorch {e['label']} {r['psnr_db']:.2f} dB vs {r['psnr_db_without']:.2f} dB without "
            f"({r['gain_db']:+.2f} dB){acc}; {r['time_ratio']:.1f}x the time ({r['seconds']:.3f} s vs "
            f"{r['seconds_without']:.3f} s)"
        )
    return lines


def rich_table(result: ValidationResult) -> Table:
    from rich.table import Table

    ensemble = f", every engine {result.self_ensemble['label']}" if result.self_ensemble else ""
    table = Table(
        title=f"drift against PyTorch: {Path(result.checkpoint).name} on {result.dataset.get('name')} "
        f"(test split, {result.dataset.get('images')} images{ensemble})",
        caption="drift: PSNR minus PyTorch's (negative = worse); fidelity: PSNR against PyTorch's output; "
        "acc Δ: accuracy minus PyTorch's in points (negative = worse). Budgets (lowest drift dB / acc Δ pt): "
        + ", ".join(f"{p} -{b.max_psnr_drift_db:g} / -{b.max_acc_drop_pt:g}" for p, b in result.budgets.items()),
    )
    budget_at = len(_COLUMNS) - 2  # budgets are per precision: the caption lists them, not every row
    for name, justify in _COLUMNS[:budget_at] + _COLUMNS[budget_at + 1 :]:
        table.add_column(name, justify=justify, no_wrap=name in ("status", "σ"))  # type: ignore[arg-type]
    for cells, status in _table_rows(result):
        del cells[budget_at]
        if status is False:
            cells[-1] = "[bold red]FAIL[/]"
        elif status is True:
            cells[-1] = "[green]PASS[/]"
        else:
            cells[-1] = "[dim]reference[/]"
        table.add_row(*cells)
    return table


def markdown(result: ValidationResult, figures: bool = True) -> str:
    d = result.dataset
    verdict = (
        "**PASS**: every artifact is within its budget"
        if result.passed
        else ("**FAIL**: " + ", ".join(f"`{_label(a)}`" for a in result.failed) + " break their budget")
    )
    lines = [
        "# addunet-edge validation",
        "",
        f"- checkpoint (reference, PyTorch fp32): `{result.checkpoint}`",
        f"- data: `{d.get('source')}`, test split, {d.get('images')} images of shape {d.get('image_shape')}, "
        f"Gaussian noise sigma {', '.join(f'{s:g}' for s in result.sigmas)} (0-255 scale), seed {result.seed}",
        f"- verdict: {verdict}",
        "",
        "Drift is the PSNR of an artifact minus PyTorch's on the same noisy images (negative = worse); fidelity is "
        "the PSNR of its output against PyTorch's output; acc Δ is its accuracy minus PyTorch's in percentage "
        "points (negative = worse). A budget is the lowest drift and acc Δ allowed.",
        "",
        "## Budgets",
        "",
        "| precision | lowest PSNR drift (dB) | lowest accuracy change (pt) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {p} | -{b.max_psnr_drift_db:g} | -{b.max_acc_drop_pt:g} |" for p, b in result.budgets.items()]
    lines += ["", "## Results", ""]
    lines.append("| " + " | ".join(name.replace("|", "\\|") for name, _ in _COLUMNS) + " |")
    lines.append("|" + "|".join("---" if j == "left" else "---:" for _, j in _COLUMNS) + "|")
    for cells, status in _table_rows(result):
        if status is False:
            cells[-1] = "**FAIL**"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if result.self_ensemble:
        lines += ["", "## Self-ensemble", ""] + [f"- {line}" for line in ensemble_lines(result)]
    if result.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in result.warnings]
    if figures:
        lines += [
            "",
            "## Figures",
            "",
            f"![PSNR drift per artifact and sigma]({DRIFT_NAME})",
            "",
            f"![crops: clean, noisy, PyTorch and every artifact]({CROPS_NAME})",
        ]
    return "\n".join(lines) + "\n"


def _bar_label(value: float, spec: str) -> str:
    # fp32 / fp16 drifts are 1e-7 .. 1e-4 dB: a fixed format would print them all as 0.000.
    if value != 0 and abs(value) < 10 ** -int(spec[-2]):
        return f"{value:+.1e}"
    return format(value, spec)


def _show(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, h, w) -> what imshow takes, clipped to [0, 1]."""
    x = np.clip(image, 0.0, 1.0)
    if x.shape[0] == 1:
        return x[0], "gray"
    return x.transpose(1, 2, 0), None


def plot_crops(result: ValidationResult, path: str | Path) -> Path:
    """Grid: one row per crop; columns clean, noisy, PyTorch and each artifact, PSNR (dB) in every title."""
    from .metrics import psnr_per_image

    s = result.samples
    if s is None:
        raise ValueError("the result carries no sample crops")
    plt = pyplot()
    columns = [("clean", s.clean), (f"noisy σ={s.sigma:g}", s.noisy)]
    columns += [
        (_axis_label(a) if not a.reference else "PyTorch (reference)" + _suffix(a), out)
        for a, out in zip(result.artifacts, s.outputs, strict=True)
    ]
    n_rows, n_cols = len(s.clean), len(columns)
    cell = 2.0
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + 0.9), squeeze=False)
    for j, (name, images) in enumerate(columns):
        values = None if j == 0 else psnr_per_image(np.clip(images, 0, 1), s.clean)
        for i in range(n_rows):
            ax = axes[i, j]
            img, cmap = _show(images[i])
            ax.imshow(img, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            value = "" if values is None else f"{values[i]:.2f} dB"
            ax.set_title(f"{name}\n{value}" if i == 0 else value, fontsize=8)
    fig.suptitle(
        f"{Path(result.checkpoint).name}: crops of held-out {result.dataset.get('name')} images at σ={s.sigma:g} "
        "(PSNR against clean)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    return path


def plot_drift(result: ValidationResult, path: str | Path) -> Path:
    """Grouped bars of PSNR drift (and accuracy change, with classes) per artifact and sigma, budget lines;
    both negative when worse, so every bar below its budget line has failed."""
    plt = pyplot()
    arts = [a for a in result.artifacts if not a.reference]
    sigmas = list(result.sigmas)
    by_key = {(r.artifact, r.sigma): r for r in result.rows if not r.reference}
    with_acc = any(math.isfinite(r.accuracy_change_pt) for r in by_key.values())
    panels = [("psnr_drift_db", "PSNR drift (dB)", "max_psnr_drift_db", -1.0, "+.3f")]
    if with_acc:
        panels.append(("accuracy_change_pt", "accuracy change (percentage points)", "max_acc_drop_pt", -1.0, "+.2f"))
    n_art = max(1, len(arts))
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(6.0, 1.6 + 1.5 * n_art * max(1, len(sigmas)) * 0.6), 3.4 * len(panels)),
        squeeze=False,
    )
    width = 0.8 / max(1, len(sigmas))
    colors = plt.get_cmap("viridis")(np.linspace(0.15, 0.75, max(1, len(sigmas))))
    x = np.arange(len(arts))
    for ax, (key, ylabel, budget_key, sign, spec) in zip(axes[:, 0], panels, strict=True):
        for k, sigma in enumerate(sigmas):
            values = np.array([getattr(by_key[(a.artifact, sigma)], key) for a in arts], dtype=float)
            failed = [not by_key[(a.artifact, sigma)].passed for a in arts]
            pos = x - 0.4 + width * (k + 0.5)
            bars = ax.bar(
                pos,
                np.nan_to_num(values),
                width,
                color=colors[k],
                label=f"σ={sigma:g}",
                edgecolor=["red" if f else "none" for f in failed],
                linewidth=1.5,
            )
            for rect, v in zip(bars, values, strict=True):
                if math.isfinite(v):
                    ax.annotate(
                        _bar_label(v, spec),
                        (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center",
                        va="bottom" if v >= 0 else "top",
                        fontsize=7,
                        xytext=(0, 2 if v >= 0 else -2),
                        textcoords="offset points",
                    )
        for i, a in enumerate(arts):
            if a.budget is not None:
                limit = sign * getattr(a.budget, budget_key)
                ax.hlines(
                    limit,
                    i - 0.45,
                    i + 0.45,
                    colors="red",
                    linestyles="--",
                    linewidth=1.2,
                    label="budget" if i == 0 else None,
                )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel(ylabel)
        ax.set_xticks(x)
        ax.set_xticklabels([_axis_label(a) for a in arts], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        lo, hi = ax.get_ylim()
        pad = 0.12 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)  # room for the value labels
    verdict = "all within budget" if result.passed else f"{len(result.failed)} over budget (red outline)"
    axes[0, 0].set_title(
        f"drift against PyTorch ({Path(result.checkpoint).name}) per artifact and noise level: {verdict}",
        fontsize=10,
    )
    axes[-1, 0].set_xlabel("artifact")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    return path


def write_json(result: ValidationResult, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_json(path, result.to_dict())
    return path


def write_reports(result: ValidationResult, report_dir: str | Path) -> dict[str, Path]:
    """Write validation.json, report.md, crops.png and drift.png (each atomically) into `report_dir`."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(result, report_dir / JSON_NAME)}
    figures = result.samples is not None
    if figures:
        written["crops"] = plot_crops(result, report_dir / CROPS_NAME)
        written["drift"] = plot_drift(result, report_dir / DRIFT_NAME)
    md = report_dir / MARKDOWN_NAME
    atomic_write_text(md, markdown(result, figures=figures))
    written["markdown"] = md
    return written
