"""quickstart end to end as a user runs it, cut down to one epoch and a small benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from addunet_edge.quickstart import quickstart


@pytest.mark.slow
def test_quickstart_runs_every_stage_and_leaves_its_reports(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    result = quickstart(out, epochs=1, bench_iterations=2, bench_size=64)
    assert set(result.artifacts) >= {"fp32", "fp16", "int8-cpu", "int8-tensorrt"}
    for path in result.artifacts.values():
        assert path.exists() and path.with_name(path.name + ".manifest.json").exists()
    for name in ("validation.json", "report.md", "crops.png", "drift.png"):
        assert (out / "report" / name).stat().st_size > 0, name
    for name in ("bench.json", "bench.csv", "bench.md", "latency.png"):
        assert (out / "bench" / name).stat().st_size > 0, name
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["test"]["psnr_db"] > 0 and set(summary["timings_s"]) >= {"train", "validate", "bench"}
    report = json.loads((out / "report" / "validation.json").read_text())
    sigmas = {row["sigma"] for row in report["rows"]}
    assert sigmas == {15.0, 25.0, 50.0}
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert any(row["backend"] == "torch" for row in bench["rows"])
