"""Reports of a study result: the rich table, the Markdown report and the gates figure, and their file names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .plotting import pyplot, save_figure
from .study_claims import ACCURACY_TOLERANCE, PSNR_TOLERANCE_DB

if TYPE_CHECKING:
    from rich.table import Table

JSON_NAME = "study.json"
MARKDOWN_NAME = "report.md"
GATES_NAME = "gates.png"


def _pm(s: dict[str, Any], spec: str, scale: float = 1.0) -> str:
    if s.get("mean") is None:
        return "-"
    return f"{format(scale * s['mean'], spec)} ± {format(scale * s['std'], spec)}"


def _gates_text(gates: Sequence[dict[str, Any]]) -> str:
    return " / ".join("-" if g["mean"] is None else f"{g['mean']:.2f}" for g in gates) or "-"


def study_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(title=f"study: mean ± std over {result['settings']['seeds']} seed(s)")
    for col, just in (
        ("config", "left"),
        ("PSNR dB", "right"),
        ("SSIM", "right"),
        ("accuracy %", "right"),
        ("parameters", "right"),
        ("MACs / px", "right"),
        ("gates shallow→deep", "left"),
    ):
        table.add_column(col, justify=just, no_wrap=col == "config")  # type: ignore[arg-type]
    for c in result["configs"]:
        table.add_row(
            c["config"],
            _pm(c["psnr_db"], ".2f"),
            _pm(c["ssim"], ".4f"),
            _pm(c["accuracy"], ".1f", 100.0),
            f"{c['parameters']:,}",
            f"{c['macs_per_pixel']:,.0f}",
            _gates_text(c["gates"]),
        )
    return table


def markdown_report(result: dict[str, Any], figure: str | None = GATES_NAME) -> str:
    s = result["settings"]
    budget = (
        f"{s['minutes']:g} min in all ({s['minutes_per_run']:.2f} min per run)" if s["minutes"] else "no time budget"
    )
    lines = [
        "# AddUNet study",
        "",
        f"AddUNet and ConcatUNet at width {s['width']}, depth {s['depth']} ({s['blocks']} blocks, full-rate), "
        f"sigma {s['sigma']:g}; {s['seeds']} seed(s) per configuration; {budget}"
        + (f", at most {s['epochs']} epochs per run" if s["epochs"] else "")
        + (f"; quick check: at most {s['limit']} images per split" if s["limit"] else "")
        + ". Digits runs are multi-task at each lambda (lambda = 0: denoising alone); photo runs are "
        "denoise-only, scored on the held-out camera, coins and astronaut tiles. Mean ± std over seeds.",
        "",
        "## Claims",
        "",
    ]
    for claim in result["claims"]:
        lines.append(f"- **{claim['title']}: {claim['verdict'].upper()}.** {claim['summary']}")
    lines += [
        "",
        "How they are decided: (a) depth ratio = mean(deeper half of the gates) / mean(shallower half), per "
        "AddUNet digits run; reproduced when it is higher at every lambda > 0 than at lambda = 0, by more than "
        "the seed spread where there are several seeds; not reproduced when it is lower or equal at every "
        "lambda > 0 (likewise beyond the spread); inconclusive otherwise. With one seed the sign alone "
        "decides. (b) for every task, AddUNet's PSNR within "
        f"{PSNR_TOLERANCE_DB} dB of ConcatUNet's, accuracy within {100 * ACCURACY_TOLERANCE:g} point, and fewer "
        "parameters.",
        "",
        "## Results",
        "",
        "| config | PSNR dB | SSIM | accuracy % | parameters | MACs / px | gates shallow→deep | deep/shallow |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["configs"]:
        lines.append(
            f"| {c['config']} | {_pm(c['psnr_db'], '.2f')} | {_pm(c['ssim'], '.4f')} | "
            f"{_pm(c['accuracy'], '.1f', 100.0)} | {c['parameters']:,} | {c['macs_per_pixel']:,.0f} | "
            f"{_gates_text(c['gates'])} | {_pm(c['depth_ratio'], '.3f')} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "| run | PSNR dB | accuracy % | epochs | train s | folder |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}"
        psnr_text = "-" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        secs = "-" if r["train_time_s"] is None else f"{r['train_time_s']:.0f}"
        lines.append(
            f"| {r['name']}{' (reused)' if r['reused'] else ''} | {psnr_text} | {acc} | "
            f"{r['epochs'] or '-'} | {secs} | `{r['dir']}` |"
        )
    if figure:
        lines += ["", f"![gates by level]({figure})"]
    return "\n".join(lines) + "\n"


def gates_figure(configs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Left: AddUNet's gates by level for each lambda (and photos), ± std over seeds. Right: depth ratio."""
    plt = pyplot()

    rows = [c for c in configs if c["arch"] == "addunet" and c["gates"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    cmap = plt.get_cmap("viridis")
    digits = [c for c in rows if c["task"] == "digits"]
    for c in rows:
        levels = np.arange(1, len(c["gates"]) + 1)
        mean = np.array([np.nan if g["mean"] is None else g["mean"] for g in c["gates"]])
        std = np.array([0.0 if g["std"] is None else g["std"] for g in c["gates"]])
        if c["task"] == "digits":
            color = cmap(digits.index(c) / max(1, len(digits) - 1) * 0.85)
            label, style = f"digits, λ = {c['lambda']:g}", "-o"
        else:
            color, label, style = "tab:red", "photos, denoise only", "--s"
        ax.errorbar(levels, mean, yerr=std, fmt=style, color=color, label=label, capsize=3)
    ax.set_xlabel("level (1 = shallowest skip)")
    ax.set_ylabel("gate α = softplus(β)")
    ax.set_title("AddUNet learned gates by level (± std over seeds)")
    if rows:
        ax.set_xticks(np.arange(1, max(len(c["gates"]) for c in rows) + 1))
        ax.legend(fontsize=8)
    ax.axhline(1.0, color="0.7", lw=0.8, zorder=0)
    ax.grid(alpha=0.3)
    ratio_rows = [c for c in digits if c["depth_ratio"]["mean"] is not None]
    if ratio_rows:
        xs = [c["lambda"] for c in ratio_rows]
        ax2.errorbar(
            range(len(xs)),
            [c["depth_ratio"]["mean"] for c in ratio_rows],
            yerr=[c["depth_ratio"]["std"] for c in ratio_rows],
            fmt="-o",
            color="tab:blue",
            capsize=3,
        )
        ax2.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    ax2.set_xlabel("λ (classification weight)")
    ax2.set_ylabel("deep / shallow gate ratio")
    ax2.set_title("claim (a): ratio should rise with λ")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
