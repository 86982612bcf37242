"""`compare` (model and ONNX vs BM3D / NL-means / TV / wavelet) and `study` (claims, resume) end to end, tiny."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from addunet_edge import _lazy
from addunet_edge.classical_denoisers import BASELINE_LABELS, tv_weight
from addunet_edge.compare import compare, noisy_copy
from addunet_edge.compare_report import markdown_report
from addunet_edge.errors import ConfigError, MissingDependencyError
from addunet_edge.study import StudyConfig, plan_runs
from addunet_edge.study_claims import aggregate, check_competitive_claim, check_gate_claim, depth_ratio, stats

torch = pytest.importorskip("torch")


def _app() -> typer.Typer:
    """The real app, as a user runs it."""
    from addunet_edge.cli import app

    return app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised gray denoiser (width 8, depth 2): the mechanics need no training."""
    from addunet_edge.checkpoint import save_checkpoint
    from addunet_edge.model import ModelConfig, build_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("compare") / "tiny"
    save_checkpoint(folder, build_model(ModelConfig(width=8, depth=2, num_classes=0)).eval())
    return folder


@pytest.fixture(scope="module")
def onnx_artifact(checkpoint: Path) -> Path:
    from addunet_edge.export import export_onnx

    path, _ = export_onnx(checkpoint, checkpoint.parent / "tiny.fp32.onnx")
    return Path(path)


# -- compare ------------------------------------------------------------------------------------------


def test_compare_cli_scores_every_method_and_writes_reports(
    checkpoint: Path, onnx_artifact: Path, tmp_path: Path
) -> None:
    report, json_path = tmp_path / "report", tmp_path / "c.json"
    args = ["compare", str(checkpoint), str(onnx_artifact), "--images", "camera", "--sigma", "25", "--crop", "96"]
    result = CliRunner().invoke(_app(), [*args, "--report", str(report), "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    assert data["schema"] == "addunet-edge/compare" and data["schema_version"] == 1
    assert data["protocol"]["shapes"] == {"camera": [1, 96, 96]}
    names = [m["name"] for m in data["methods"]]
    assert names == [
        "noisy input",
        "tiny (torch fp32)",
        "tiny.fp32.onnx (onnxruntime fp32)",
        *BASELINE_LABELS.values(),
    ]
    assert data["skipped"] == {}
    by_method = {r["method"]: r for r in data["results"]}
    assert all(math.isfinite(r["psnr_db"]) and 0 < r["ssim"] <= 1 for r in data["results"])
    noisy = by_method["noisy input"]["psnr_db"]
    assert 19.5 < noisy < 21.0  # sigma 25 on the 0-255 scale: 20.2 dB expected
    for label in BASELINE_LABELS.values():
        # Each classical denoiser, given the right sigma scale, clearly improves on the noisy input.
        assert by_method[label]["psnr_db"] > noisy + 3.0, label
    # The ONNX export computes the checkpoint's function on the same noisy image.
    assert by_method["tiny.fp32.onnx (onnxruntime fp32)"]["psnr_db"] == pytest.approx(
        by_method["tiny (torch fp32)"]["psnr_db"], abs=0.01
    )
    assert data["beats_bm3d"][0]["sigma"] == 25.0
    assert data["beats_bm3d"][0]["beats_bm3d"] is False  # an untrained model does not beat BM3D
    assert "camera, sigma 25" in result.output and "does NOT beat BM3D" in result.output
    assert "beats BM3D in 0 of 1 comparisons" in result.output
    assert (report / "compare.json").exists()
    md = (report / "compare.md").read_text()
    assert "| BM3D |" in md and "**" in md and "![crops](crops.png)" in md
    png = (report / "crops.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_missing_bm3d_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    real_require = _lazy.require

    def require(module: str, purpose: str):
        if module == "bm3d":
            raise MissingDependencyError(f"{purpose} needs 'bm3d': {_lazy.install_hint('bm3d')}")
        return real_require(module, purpose)

    monkeypatch.setattr(_lazy, "require", require)
    result = compare(checkpoint, images=["camera"], sigmas=[25], baselines=["bm3d", "wavelet"], crop=64, progress=False)
    assert "BM3D" in result.skipped and "addunet-edge[baselines]" in result.skipped["BM3D"]
    assert [m.name for m in result.methods] == ["noisy input", "tiny (torch fp32)", "Wavelet (BayesShrink)"]
    assert result.beats_bm3d() == []
    assert "## Skipped" in markdown_report(result) and "BM3D was skipped" in markdown_report(result)


def test_compare_rejects_bad_options(checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="unknown baseline"):
        compare(checkpoint, baselines=["bm4d"], progress=False)
    with pytest.raises(ConfigError, match="sigmas must be positive"):
        compare(checkpoint, sigmas=[0], progress=False)


def test_every_method_sees_the_same_seeded_noise() -> None:
    clean = np.full((1, 16, 16), 0.5, np.float32)
    a = noisy_copy(clean, "camera", 25, 0)
    np.testing.assert_array_equal(a, noisy_copy(clean, "camera", 25, 0))
    assert not np.array_equal(a, noisy_copy(clean, "camera", 25, 1))
    assert not np.array_equal(a, noisy_copy(clean, "coins", 25, 0))
    assert np.std(a - clean) == pytest.approx(25 / 255, rel=0.2)


def test_tv_weight_follows_the_measured_table() -> None:
    assert tv_weight(25) == pytest.approx(0.10)
    assert tv_weight(20) == pytest.approx(0.08)
    assert tv_weight(100) == pytest.approx(0.44)
    weights = [tv_weight(s) for s in range(0, 80, 5)]
    assert weights == sorted(weights)


# -- study: claim logic on synthetic results --------------------------------------------------------


def _run(arch: str, lam: float, seed: int, gates: list[float], psnr: float, acc: float | None, params: int):
    task = "digits"
    name = f"{arch}-digits-l{lam:g}"
    return {
        "config": name,
        "arch": arch,
        "task": task,
        "lambda": lam,
        "seed": seed,
        "psnr_db": psnr,
        "ssim": 0.9,
        "accuracy": acc,
        "gates": gates if arch == "addunet" else [],
        "parameters": params,
        "macs_per_pixel": 100.0,
        "train_time_s": 1.0,
    }


def _study(deep_at_0: tuple[float, float], deep_at_l: tuple[float, float], psnr_gap: float = 0.1, acc_gap=0.0):
    runs = []
    for seed, (d0, dl) in enumerate(zip(deep_at_0, deep_at_l, strict=True)):
        runs.append(_run("addunet", 0.0, seed, [1.0, 1.0, d0, d0], 30.0, None, 900))
        runs.append(_run("concat", 0.0, seed, [], 30.0, None, 1200))
        runs.append(_run("addunet", 0.2, seed, [1.0, 1.0, dl, dl], 29.0 + psnr_gap, 0.95 + acc_gap, 950))
        runs.append(_run("concat", 0.2, seed, [], 29.0, 0.95, 1250))
    return aggregate(runs)


def test_stats_and_depth_ratio() -> None:
    s = stats([1.0, 3.0, None, float("nan")])
    assert s == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert stats([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1}
    assert stats([None]) == {"mean": None, "std": None, "n": 0}
    assert depth_ratio([1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.5 / 1.5)
    assert depth_ratio([1.0, 5.0, 3.0]) == pytest.approx(3.0)  # the middle level is left out
    assert depth_ratio([2.0]) is None


def test_aggregate_gives_mean_and_std_per_gate_level() -> None:
    configs = _study((0.5, 0.7), (1.5, 1.7))
    add0 = configs[0]
    assert add0["config"] == "addunet-digits-l0" and add0["seeds"] == [0, 1]
    assert add0["gates"][2]["mean"] == pytest.approx(0.6) and add0["gates"][2]["std"] == pytest.approx(0.1414, 1e-3)
    assert add0["depth_ratio"]["mean"] == pytest.approx(0.6)
    assert configs[1]["gates"] == [] and configs[1]["depth_ratio"]["n"] == 0


def test_gate_claim_verdicts() -> None:
    assert check_gate_claim(_study((0.5, 0.6), (1.5, 1.6)))["verdict"] == "reproduced"
    assert check_gate_claim(_study((1.5, 1.6), (0.5, 0.6)))["verdict"] == "not reproduced"
    # Higher on average but well within the seed-to-seed spread.
    within = check_gate_claim(_study((0.5, 1.5), (0.6, 1.6)))
    assert within["verdict"] == "inconclusive" and within["details"][0]["beyond_spread"] is False
    one_seed = check_gate_claim(_study((0.5,), (0.6,)))
    assert one_seed["verdict"] == "reproduced" and "one seed" in one_seed["summary"]
    no_baseline = [c for c in _study((0.5,), (0.6,)) if c["lambda"] > 0]
    assert check_gate_claim(no_baseline)["verdict"] == "not testable"


def test_competitive_claim_verdicts() -> None:
    ok = check_competitive_claim(_study((0.5,), (0.6,), psnr_gap=-0.2, acc_gap=-0.005))
    assert ok["verdict"] == "reproduced" and len(ok["details"]) == 2
    low_psnr = check_competitive_claim(_study((0.5,), (0.6,), psnr_gap=-0.5))
    assert low_psnr["verdict"] == "not reproduced"
    assert low_psnr["details"][1]["checks"] == {"psnr": False, "accuracy": True, "fewer_parameters": True}
    low_acc = check_competitive_claim(_study((0.5,), (0.6,), acc_gap=-0.02))
    assert low_acc["details"][1]["checks"]["accuracy"] is False and "fails: accuracy" in low_acc["summary"]
    only_add = [c for c in _study((0.5,), (0.6,)) if c["arch"] == "addunet"]
    assert check_competitive_claim(only_add)["verdict"] == "not testable"


def test_study_config_validation_and_plan() -> None:
    with pytest.raises(ConfigError, match="budget"):
        StudyConfig(minutes=None, epochs=None)
    with pytest.raises(ConfigError, match="duplicates"):
        StudyConfig(lambdas=(0.0, 0.0))
    plan = plan_runs(StudyConfig(seeds=2, lambdas=(0.0, 0.05)))
    assert len(plan) == 2 * 2 * 3  # archs x seeds x (two lambdas + photos)
    assert plan[0].run_name == "addunet-digits-l0-s0" and plan[-1].run_name == "concat-photos-s1"


# -- study end to end ---------------------------------------------------------------------------------


def test_study_cli_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "study"
    base = ["study", "--out", str(out), "--minutes", "0", "--epochs", "1", "--seeds", "1", "--lambdas", "0,0.2"]
    base += ["--depth", "2", "--limit", "32", "--no-photos"]
    args = [*base, "--width", "4"]
    first = CliRunner().invoke(_app(), args)
    assert first.exit_code == 0, first.output
    data = json.loads((out / "study.json").read_text())
    assert data["schema"] == "addunet-edge/study"
    assert [c["config"] for c in data["configs"]] == [
        "addunet-digits-l0",
        "concat-digits-l0",
        "addunet-digits-l0.2",
        "concat-digits-l0.2",
    ]
    for c in data["configs"]:
        assert set(c["psnr_db"]) == {"mean", "std", "n"} and math.isfinite(c["psnr_db"]["mean"])
        assert c["parameters"] > 0 and c["macs_per_pixel"] > 0
    add, concat = data["configs"][2], data["configs"][3]
    assert len(add["gates"]) == 2 and concat["gates"] == []
    assert add["parameters"] < concat["parameters"]
    assert 0.0 <= add["accuracy"]["mean"] <= 1.0 and data["configs"][0]["accuracy"]["mean"] is None
    assert {c["id"] for c in data["claims"]} == {"a", "b"}
    for run in data["runs"]:
        assert (Path(run["dir"]) / "config.json").exists() and run["reused"] is False
    assert (out / "gates.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "(a)" in report and "(b)" in report

    again = CliRunner().invoke(_app(), args)
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier") == 4
    assert all(r["reused"] for r in json.loads((out / "study.json").read_text())["runs"])

    other = CliRunner().invoke(_app(), [*base, "--width", "6"])
    assert other.exit_code == ConfigError.exit_code and "other settings" in other.output
