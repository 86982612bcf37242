"""`bench` end to end on a tiny real AddUNet: reports, baseline, alternation, refusals, tegrastats parsing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from addunet_edge.benchmarking import (
    ROUND_ITERATIONS,
    SCHEMA,
    bench,
    lineage,
    parse_tegrastats,
    write_reports,
)
from addunet_edge.errors import ConfigError, ShapeError

pytest.importorskip("onnxruntime")

REQUIRED = (
    "artifact",
    "backend",
    "precision",
    "batch",
    "height",
    "width",
    "latency_ms_min",
    "latency_ms_median",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_max",
    "throughput_img_s",
    "throughput_mpix_s",
    "peak_rss_mib",
    "macs_per_image",
    "gmac_s",
    "speedup_vs_torch",
)
FAST = ("--sizes", "32x32", "--warmup", "1", "--iterations", "3", "--threads", "1")


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from addunet_edge.export import export_onnx

    path, _ = export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("bench") / "tiny.fp32.onnx")
    return Path(path)


@pytest.fixture(scope="module")
def fixed_onnx(onnx_model: Path) -> Path:
    """The same graph with its input pinned to 1x1x32x32 (no manifest), like a fixed-shape export."""
    import onnx

    model = onnx.load(str(onnx_model))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 1, 32, 32), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    path = onnx_model.with_name("fixed32.onnx")
    onnx.save(model, str(path))
    return path


def _app() -> typer.Typer:
    """The real app, as a user runs it."""
    from addunet_edge.cli import app

    return app


def _invoke(*args: str):
    return CliRunner().invoke(_app(), ["bench", *args])


def test_cli_writes_every_report_with_every_field(onnx_model: Path, tmp_path: Path) -> None:
    out = {k: tmp_path / f"r.{k}" for k in ("json", "csv", "md", "png")}
    result = _invoke(
        str(onnx_model),
        *FAST,
        "--batches",
        "1,2",
        "--json",
        str(out["json"]),
        "--csv",
        str(out["csv"]),
        "--markdown",
        str(out["md"]),
        "--plot",
        str(out["png"]),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out["json"].read_text())
    assert report["schema"] == SCHEMA and report["schema_version"] == 1
    system = report["system"]
    assert system["cpu"] and system["threads_requested"] == 1 and system["versions"]["onnxruntime"]
    assert "bench" in system["command"]
    rows = report["rows"]
    # The baseline was found through the ONNX manifest's source checkpoint, without --baseline.
    assert sorted((r["backend"], r["batch"]) for r in rows) == [
        ("onnxruntime", 1),
        ("onnxruntime", 2),
        ("torch", 1),
        ("torch", 2),
    ]
    for row in rows:
        missing = [k for k in REQUIRED if row.get(k) is None]
        assert not missing, (row["backend"], missing)
        assert row["iterations"] == 3 and (row["height"], row["width"]) == (32, 32)
        lat = [row[f"latency_ms_{k}"] for k in ("min", "median", "p90", "p99", "max")]
        assert lat == sorted(lat) and lat[0] > 0
        assert row["throughput_img_s"] == pytest.approx(row["batch"] * 1e3 / row["latency_ms_median"])
        assert row["throughput_mpix_s"] == pytest.approx(row["throughput_img_s"] * 32 * 32 / 1e6)
        assert row["gmac_s"] == pytest.approx(row["macs_per_image"] * row["throughput_img_s"] / 1e9)
    torch_rows = [r for r in rows if r["backend"] == "torch"]
    assert all(r["baseline"] and r["speedup_vs_torch"] == 1.0 for r in torch_rows)
    for r in rows:
        ref = next(t for t in torch_rows if t["batch"] == r["batch"])
        assert r["speedup_vs_torch"] == pytest.approx(ref["latency_ms_median"] / r["latency_ms_median"])
    # MACs come from the model config and match count_macs on the checkpoint.
    from addunet_edge.checkpoint import load_checkpoint
    from addunet_edge.model import count_macs

    model, _ = load_checkpoint(lineage(onnx_model)[0])
    assert {r["macs_per_image"] for r in rows} == {count_macs(model, 32, 32).macs}

    with out["csv"].open() as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 4 and set(REQUIRED) <= set(csv_rows[0])
    md = out["md"].read_text()
    assert "| engine |" in md and md.count("\n| ") == 5  # header + 4 rows
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny.fp32.onnx" in result.output


def test_checkpoint_artifact_is_its_own_baseline(tiny_checkpoint: Path) -> None:
    result = bench([tiny_checkpoint], sizes=((32, 32),), warmup=1, iterations=2, threads=1, progress=False)
    assert len(result.rows) == 1
    row = result.rows[0]
    assert row.baseline and row.backend == "torch" and row.speedup_vs_torch == 1.0


def _recording_engine_class():
    from addunet_edge.engines.ort import OnnxRuntimeEngine

    class RecordingEngine(OnnxRuntimeEngine):
        """A real ONNX Runtime engine that also logs each call, to check the order engines ran in."""

        def __init__(self, path: Path, tag: str, log: list[tuple[str, int]]) -> None:
            super().__init__(path, threads=1)
            self.tag, self.log = tag, log

        def _infer(self, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            self.log.append((self.tag, int(noisy.shape[0])))
            return super()._infer(noisy)

    return RecordingEngine


def test_engines_alternate_in_short_rounds(onnx_model: Path, tiny_checkpoint: Path) -> None:
    recording = _recording_engine_class()
    log: list[tuple[str, int]] = []
    a, b = recording(onnx_model, "A", log), recording(onnx_model, "B", log)
    iterations, warmup = ROUND_ITERATIONS + 2, 2
    result = bench(
        [a, b],
        baseline=tiny_checkpoint,
        batches=(1, 2),
        sizes=((32, 32),),
        warmup=warmup,
        iterations=iterations,
        threads=1,
        progress=False,
    )
    one_shape = (
        ["A"] * warmup
        + ["B"] * warmup
        + ["A"] * ROUND_ITERATIONS
        + ["B"] * ROUND_ITERATIONS
        + ["A"] * (iterations - ROUND_ITERATIONS)
        + ["B"] * (iterations - ROUND_ITERATIONS)
    )
    assert [tag for tag, _ in log] == one_shape * 2
    assert [n for _, n in log] == [1] * len(one_shape) + [2] * len(one_shape)
    # The schedule the library records interleaves the torch baseline the same way.
    timed = [(s.label, s.iterations) for s in result.schedule if not s.warmup and s.batch == 1]
    torch_label, label_a, label_b = (r.label for r in result.rows if r.batch == 1)
    assert label_a != label_b  # the same file twice gets two labels
    assert timed == [
        (torch_label, 5),
        (label_a, 5),
        (label_b, 5),
        (torch_label, 2),
        (label_a, 2),
        (label_b, 2),
    ]
    assert all(r.iterations == iterations for r in result.rows)


def test_seconds_budget_runs_rounds_until_spent(onnx_model: Path) -> None:
    result = bench([onnx_model], sizes=((16, 16),), warmup=0, seconds=0.2, threads=1, progress=False)
    timed = [s for s in result.schedule if not s.warmup]
    assert {s.iterations for s in timed} == {ROUND_ITERATIONS}
    assert all(r.iterations % ROUND_ITERATIONS == 0 and r.iterations > 0 for r in result.rows)
    assert [s.label for s in timed[:2]] == [r.label for r in result.rows]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--batches", "0"), "batch sizes must be at least 1"),
        (("--batches", "-2"), "batch sizes must be at least 1"),
        (("--sizes", "abc"), "256x256"),
        (("--iterations", "0"), "iterations must be at least 1"),
        (("--device", "tpu"), "--device must be cpu, cuda or cuda:N"),
    ],
)
def test_cli_refuses_nonsense_options(onnx_model: Path, args: tuple[str, ...], message: str) -> None:
    result = _invoke(str(onnx_model), "--sizes", "32x32", "--iterations", "2", *args)
    assert result.exit_code != 0
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_cli_refuses_missing_artifact(tmp_path: Path) -> None:
    result = _invoke(str(tmp_path / "nope.onnx"), *FAST)
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output


def test_cli_refuses_shape_outside_fixed_profile(fixed_onnx: Path, tiny_checkpoint: Path) -> None:
    result = _invoke(str(fixed_onnx), "--baseline", str(tiny_checkpoint), *FAST[2:], "--sizes", "48x48")
    assert result.exit_code == ShapeError.exit_code, result.output
    text = " ".join(result.output.split())
    assert "fixed32.onnx cannot be timed at batch 1, 48x48" in text and "32x32" in text
    result = _invoke(str(fixed_onnx), "--baseline", str(tiny_checkpoint), *FAST, "--batches", "2")
    assert result.exit_code == ShapeError.exit_code and "batch 2 is outside" in result.output
    # Inside the profile, the same file is timed.
    ok = _invoke(str(fixed_onnx), "--baseline", str(tiny_checkpoint), *FAST)
    assert ok.exit_code == 0, ok.output


def test_refuses_without_any_baseline(fixed_onnx: Path) -> None:
    with pytest.raises(ConfigError, match="--baseline"):
        bench([fixed_onnx], sizes=((32, 32),), iterations=1, progress=False)


def test_plan_on_cpu_is_refused_before_opening(tmp_path: Path, tiny_checkpoint: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not opened")
    result = _invoke(str(plan), "--baseline", str(tiny_checkpoint), *FAST)
    assert result.exit_code == ConfigError.exit_code and "--device cuda" in result.output


def test_write_reports_only_what_is_asked(onnx_model: Path, tmp_path: Path) -> None:
    result = bench([onnx_model], sizes=((16, 16),), warmup=0, iterations=1, threads=1, progress=False)
    written = write_reports(result, markdown=tmp_path / "only.md")
    assert written == [tmp_path / "only.md"] and sorted(p.name for p in tmp_path.iterdir()) == ["only.md"]


# -- tegrastats ---------------------------------------------------------------------------------------------
ORIN_NANO = (
    "12-05-2024 10:00:01 RAM 2069/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,3%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 47%@[611,611] NVDEC off "
    "NVJPG off VIC off OFA off APE 200 cpu@47.781C soc2@46.75C gpu@47.375C tj@47.781C "
    "VDD_IN 4987mW/4950mW VDD_CPU_GPU_CV 519mW/510mW VDD_SOC 1437mW/1430mW"
)
ORIN_AGX = (
    "RAM 3156/62841MB (lfb 14849x4MB) SWAP 0/31421MB (cached 0MB) CPU [2%@2201,0%@2201,1%@2201,0%@2201] "
    "EMC_FREQ 0%@3199 GR3D_FREQ 99%@[1300,1300] VIC_FREQ 729 APE 174 CV0@-256C CPU@49.5C "
    "VDD_GPU_SOC 9136mW/8000mW VDD_CPU_CV 784mW/784mW VIN_SYS_5V0 4546mW/4546mW VDDQ_VDD2_1V8AO 503mW/503mW"
)
XAVIER_NX = (
    "RAM 2690/6854MB (lfb 6x1MB) SWAP 479/3427MB (cached 3MB) CPU [3%@1904,7%@1906,1%@1905,0%@1907,off,off] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@510 VIC_FREQ 601 APE 150 AUX@39C CPU@39.5C GPU@37.5C PMIC@50C "
    "VDD_IN 5079mW/5079mW VDD_CPU_GPU_CV 696mW/696mW VDD_SOC 1104mW/1104mW"
)
XAVIER_AGX_JP4 = (
    "RAM 1803/15692MB (lfb 2924x4MB) SWAP 0/7846MB (cached 0MB) CPU [5%@1190,0%@1190,2%@1190,1%@1190,"
    "off,off,off,off] EMC_FREQ 0%@665 GR3D_FREQ 12%@318 APE 150 MTS fg 0% bg 0% AO@36C GPU@35.5C "
    "GPU 155/155 CPU 310/310 SOC 931/931 CV 0/0 VDDRQ 155/155 SYS5V 1610/1610"
)
NANO_JP4 = (
    "RAM 1550/3964MB (lfb 142x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [12%@1479,5%@1479,3%@1479,2%@1479] EMC_FREQ 3%@1600 GR3D_FREQ 0%@921 APE 25 PLL@31C "
    "POM_5V_IN 2440/2440 POM_5V_GPU 40/40 POM_5V_CPU 406/406"
)


def test_tegrastats_orin_nano_reads_vdd_in_and_per_gpc_clocks() -> None:
    s = parse_tegrastats(ORIN_NANO)
    assert s is not None
    assert s.input_rail == "VDD_IN" and s.input_mw == 4987  # the current value, not the running average
    assert s.rails_mw == {"VDD_IN": 4987, "VDD_CPU_GPU_CV": 519, "VDD_SOC": 1437}
    assert (s.gpu_load_pct, s.gpu_freq_mhz, s.emc_freq_mhz) == (47, 611, 2133)
    assert s.cpu_freq_mhz == (729, 729, 729, 729)


def test_tegrastats_orin_agx_without_vdd_in_sums_the_rails() -> None:
    s = parse_tegrastats(ORIN_AGX)
    assert s is not None
    assert s.input_rail == "sum of rails" and s.input_mw == 9136 + 784 + 4546 + 503
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (99, 1300)
    assert "RAM" not in s.rails_mw and "SWAP" not in s.rails_mw


def test_tegrastats_xavier_formats() -> None:
    nx = parse_tegrastats(XAVIER_NX)
    assert nx is not None and (nx.input_rail, nx.input_mw) == ("VDD_IN", 5079)
    assert (nx.gpu_freq_mhz, nx.emc_freq_mhz) == (510, 1600)
    agx = parse_tegrastats(XAVIER_AGX_JP4)  # JetPack 4: no mW unit, no VDD_IN
    assert agx is not None
    assert agx.rails_mw == {"GPU": 155, "CPU": 310, "SOC": 931, "CV": 0, "VDDRQ": 155, "SYS5V": 1610}
    assert agx.input_mw == 155 + 310 + 931 + 155 + 1610 and agx.gpu_load_pct == 12


def test_tegrastats_nano_pom_and_lines_without_power() -> None:
    nano = parse_tegrastats(NANO_JP4)
    assert nano is not None and (nano.input_rail, nano.input_mw) == ("POM_5V_IN", 2440)
    assert "IRAM" not in nano.rails_mw
    assert parse_tegrastats("RAM 1550/3964MB (lfb 142x4MB) SWAP 0/1982MB (cached 0MB)") is None
    assert parse_tegrastats("") is None
