"""Bench reports: the terminal table, Markdown, CSV, JSON and the latency plot."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json, atomic_write_text
from ..plotting import pyplot, save_figure
from .results import ROW_FIELDS, BenchResult, BenchRow


# --------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


_TABLE_COLUMNS: tuple[tuple[str, str, Callable[[BenchRow], str]], ...] = (
    ("engine", "left", lambda r: r.label),
    ("prec", "left", lambda r: r.precision + (f"/{r.target}" if r.target else "")),
    ("timing", "left", lambda r: r.timing + (" +graph" if r.cuda_graph else "")),
    ("NxHxW", "left", lambda r: f"{r.batch}x{r.height}x{r.width}"),
    ("median ms", "right", lambda r: _fmt(r.latency_ms_median)),
    ("p90 ms", "right", lambda r: _fmt(r.latency_ms_p90)),
    ("p99 ms", "right", lambda r: _fmt(r.latency_ms_p99)),
    ("img/s", "right", lambda r: _fmt(r.throughput_img_s, 1)),
    ("MPix/s", "right", lambda r: _fmt(r.throughput_mpix_s)),
    ("GMAC/s", "right", lambda r: _fmt(r.gmac_s, 1)),
    ("RSS MiB", "right", lambda r: _fmt(r.peak_rss_mib, 0)),
    ("dev MiB", "right", lambda r: _fmt(r.device_memory_mib, 0)),
    ("mJ/img", "right", lambda r: _fmt(r.energy_mj_per_image)),
    ("×torch", "right", lambda r: f"{r.speedup_vs_torch:.2f}" if r.speedup_vs_torch else "-"),
)
# The Markdown file has room for the full spread of latencies; the terminal table does not.
_MARKDOWN_EXTRA = (
    ("min ms", "right", lambda r: _fmt(r.latency_ms_min)),
    ("max ms", "right", lambda r: _fmt(r.latency_ms_max)),
)


def _columns(result: BenchResult, markdown: bool = False) -> list[tuple[str, str, Callable[[BenchRow], str]]]:
    """The table's columns, without those that are empty for every row (no GPU, no tegrastats)."""
    skip = set()
    if all(r.device_memory_mib is None for r in result.rows):
        skip.add("dev MiB")
    if all(r.energy_mj_per_image is None for r in result.rows):
        skip.add("mJ/img")
    cols = [c for c in _TABLE_COLUMNS if c[0] not in skip]
    return [*cols[:4], _MARKDOWN_EXTRA[0], *cols[4:7], _MARKDOWN_EXTRA[1], *cols[7:]] if markdown else cols


# Dropped first from the terminal table when it is narrow (all of them stay in JSON, CSV and Markdown).
_NARROW_DROPS = ("prec", "p99 ms", "MPix/s", "dev MiB", "mJ/img")
_NARROW_WIDTH = 130


def render_table(result: BenchResult, width: int | None = None) -> Any:
    """A rich Table of the result (one row per engine, shape and timing); fewer columns under 130 characters."""
    from rich import box
    from rich.table import Table

    sysinfo = result.system
    title = f"bench: {sysinfo.get('cpu')}" + (f" + {sysinfo['gpu']}" if sysinfo.get("gpu") else "")
    caption = (
        f"threads {sysinfo.get('threads_requested')} (0 = library default), device {sysinfo.get('device')}; "
        "×torch = PyTorch median / engine median at the same shape"
    )
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    cols = _columns(result)
    if width is not None and width < _NARROW_WIDTH:
        cols = [c for c in cols if c[0] not in _NARROW_DROPS]
    for name, justify, _ in cols:
        if name == "engine":
            table.add_column(name, justify=justify, min_width=14, overflow="fold")  # type: ignore[arg-type]
        else:
            table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in result.rows:
        table.add_row(*(get(r) for _, _, get in cols), style="dim" if r.baseline else None)
    return table


def markdown_report(result: BenchResult) -> str:
    s = result.system
    lines = [
        "# addunet-edge bench",
        "",
        f"- CPU: {s.get('cpu')} ({s.get('cpu_count')} logical, {s.get('cpu_affinity')} usable)",
        f"- GPU: {s.get('gpu', 'none')}; device: {s.get('device')}; threads: {s.get('threads_requested')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items() if v),
        f"- command: `{s.get('command')}`",
        "",
    ]
    cols = _columns(result, markdown=True)
    lines.append("| " + " | ".join(name for name, _, _ in cols) + " |")
    lines.append("|" + "|".join("---:" if j == "right" else "---" for _, j, _ in cols) + "|")
    for r in result.rows:
        lines.append("| " + " | ".join(get(r).replace("|", "/") for _, _, get in cols) + " |")
    if result.notes:
        lines += ["", *(f"- note: {n}" for n in result.notes)]
    return "\n".join(lines) + "\n"


def csv_report(result: BenchResult) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
    writer.writeheader()
    for r in result.rows:
        writer.writerow(r.to_dict())
    return buf.getvalue()


def plot_latency(result: BenchResult, path: str | Path) -> Path:
    """PNG: median latency (band: min to p90) and throughput against batch size, one panel pair per size."""
    plt = pyplot()

    sizes = sorted({(r.height, r.width) for r in result.rows})
    series = list(dict.fromkeys((r.label, r.timing) for r in result.rows))
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 4.2 * len(sizes)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row_axes, (h, w) in zip(axes, sizes, strict=True):
        ax_lat, ax_thr = row_axes
        for k, (label, timing) in enumerate(series):
            rows = sorted(
                (r for r in result.rows if (r.label, r.timing, r.height, r.width) == (label, timing, h, w)),
                key=lambda r: r.batch,
            )
            if not rows:
                continue
            x = [r.batch for r in rows]
            name = (label if timing == "host" else f"{label} [{timing}]") + (" (baseline)" if rows[0].baseline else "")
            style = {"color": colors(k % 10), "marker": "o", "linestyle": "--" if rows[0].baseline else "-"}
            ax_lat.plot(x, [r.latency_ms_median for r in rows], label=name, **style)
            ax_lat.fill_between(
                x, [r.latency_ms_min for r in rows], [r.latency_ms_p90 for r in rows], color=style["color"], alpha=0.12
            )
            ax_thr.plot(x, [r.throughput_img_s for r in rows], label=name, **style)
        batches = sorted({r.batch for r in result.rows})
        for ax, ylabel in ((ax_lat, "ms per batch (median; band: min to p90)"), (ax_thr, "images / s")):
            if len(batches) > 1 and batches[-1] / batches[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_xlabel("batch size")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{h}x{w}: " + ("latency" if ax is ax_lat else "throughput"))
        ax_lat.legend(fontsize=8, loc="upper left")
    s = result.system
    fig.suptitle(
        f"{s.get('cpu')}" + (f" + {s['gpu']}" if s.get("gpu") else "") + f", threads {s.get('threads_requested')}",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path)


def write_reports(
    result: BenchResult,
    *,
    json: str | Path | None = None,
    csv: str | Path | None = None,
    markdown: str | Path | None = None,
    plot: str | Path | None = None,
) -> list[Path]:
    """Write the requested reports atomically; returns the paths written."""
    written = []
    if json is not None:
        atomic_write_json(json, result.to_dict())
        written.append(Path(json))
    if csv is not None:
        atomic_write_text(csv, csv_report(result))
        written.append(Path(csv))
    if markdown is not None:
        atomic_write_text(markdown, markdown_report(result))
        written.append(Path(markdown))
    if plot is not None:
        written.append(plot_latency(result, plot))
    return written
