"""Latency, throughput, memory and energy of every engine, with the PyTorch baseline timed in the same run."""

from __future__ import annotations

from .contenders import lineage, macs_per_image
from .measure import bench
from .reports import csv_report, markdown_report, plot_latency, render_table, write_reports
from .results import ROUND_ITERATIONS, SCHEMA, SCHEMA_VERSION, BenchResult, BenchRow, ScheduleEntry
from .system import load_average, system_info
from .tegrastats import TegraSample, TegrastatsSampler, parse_tegrastats

__all__ = [
    "ROUND_ITERATIONS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "BenchResult",
    "BenchRow",
    "ScheduleEntry",
    "TegraSample",
    "TegrastatsSampler",
    "bench",
    "csv_report",
    "lineage",
    "load_average",
    "macs_per_image",
    "markdown_report",
    "parse_tegrastats",
    "plot_latency",
    "render_table",
    "system_info",
    "write_reports",
]
