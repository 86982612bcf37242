"""The paper's study in one call: AddUNet vs ConcatUNet, denoise-only and multi-task, over seeds, with claim checks.

Runs (all at the same width and depth, full-rate, sigma 25):

- `<arch>-digits-l<lambda>` for every lambda: multi-task on digits (lambda = 0 trains denoising alone, with
  no classifier), the setting where the paper reads its gates;
- `<arch>-photos`: denoise-only on photo patches, scored on the held-out photos (camera, coins, astronaut).

Every run's checkpoint is DIR/runs/<config>-s<seed>; a run whose checkpoint already holds test metrics is
read back, not retrained, and an interrupted one resumes from its last epoch.

Claims checked (pure functions over the aggregated results, so they are tested on synthetic numbers):

(a) "shallow skips favour reconstruction, deeper features support classification": with lambda > 0 the
    deep gates are larger relative to the shallow ones than at lambda = 0. Measured by the depth ratio
    mean(deeper half of the gates) / mean(shallower half) (the middle level of an odd depth is left out).
(b) "AddUNet stays competitive with fewer parameters": for every task, AddUNet's mean PSNR is within
    0.3 dB of ConcatUNet's, its accuracy within 1 point, and it has fewer parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .artifacts import atomic_write_json, atomic_write_text, output_lock, package_versions
from .errors import ConfigError
from .plotting import pyplot, save_figure

if TYPE_CHECKING:
    from rich.table import Table

    from .data import Dataset
    from .model import ModelConfig
    from .training import TrainConfig

SCHEMA = "addunet-edge/study"
SCHEMA_VERSION = 1
ARCHS = ("addunet", "concat")
BLOCKS = ("paper", "deploy")
PSNR_TOLERANCE_DB = 0.3
ACCURACY_TOLERANCE = 0.01  # one percentage point
JSON_NAME = "study.json"
MARKDOWN_NAME = "report.md"
GATES_NAME = "gates.png"
MAX_EPOCHS = 1000  # cap when only a time budget bounds a run


@dataclass(frozen=True)
class StudyConfig:
    """What the study trains; `minutes` is the total budget, split evenly over all runs."""

    out: Path = Path("runs/study")
    minutes: float | None = 20.0
    seeds: int = 2
    lambdas: tuple[float, ...] = (0.0, 0.05, 0.2)
    width: int = 16
    depth: int = 4
    epochs: int | None = None  # per run; with `minutes`, a cap
    photos: bool = True  # also the denoise-only runs on photographs
    # 'paper': plain conv blocks, no BatchNorm, no bounds, no head projection (the papers' model);
    # 'deploy': this package's defaults (BatchNorm, bounded states: int8-friendly).
    blocks: str = "paper"
    limit: int | None = None  # cap on images per split and photo patches per epoch, for quick checks
    sigma: float = 25.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if not self.lambdas or any(v < 0 for v in self.lambdas):
            raise ConfigError(f"--lambdas must be non-negative numbers, got {list(self.lambdas)}")
        if len(set(self.lambdas)) != len(self.lambdas):
            raise ConfigError(f"--lambdas has duplicates: {list(self.lambdas)}")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"--minutes must be positive, got {self.minutes}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.minutes is None and self.epochs is None:
            raise ConfigError("give the study a budget: --minutes (split over runs) or --epochs per run")
        if self.blocks not in BLOCKS:
            raise ConfigError(f"--blocks must be one of {', '.join(BLOCKS)}, got {self.blocks!r}")
        if self.limit is not None and self.limit < 4:
            raise ConfigError(f"--limit must be at least 4, got {self.limit}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "minutes": self.minutes,
            "seeds": self.seeds,
            "lambdas": list(self.lambdas),
            "width": self.width,
            "depth": self.depth,
            "epochs": self.epochs,
            "photos": self.photos,
            "blocks": self.blocks,
            "limit": self.limit,
            "sigma": self.sigma,
            "device": self.device,
        }


@dataclass(frozen=True)
class RunSpec:
    arch: str
    task: str  # 'digits' | 'photos'
    cls_weight: float
    seed: int

    @property
    def config_name(self) -> str:
        return f"{self.arch}-photos" if self.task == "photos" else f"{self.arch}-digits-l{self.cls_weight:g}"

    @property
    def run_name(self) -> str:
        return f"{self.config_name}-s{self.seed}"


def plan_runs(config: StudyConfig) -> list[RunSpec]:
    """Every run of the study, configurations in report order, seeds innermost."""
    specs = []
    for task, weights in (("digits", config.lambdas), ("photos", (0.0,) if config.photos else ())):
        for lam in weights:
            for arch in ARCHS:
                specs += [RunSpec(arch, task, lam, seed) for seed in range(config.seeds)]
    return specs


def model_config(config: StudyConfig, spec: RunSpec) -> ModelConfig:
    from .model import ModelConfig

    plain = {"norm": "none", "bound": None, "head_projection": False} if config.blocks == "paper" else {}
    classes = 10 if spec.task == "digits" and spec.cls_weight > 0 else 0
    return ModelConfig(
        arch=spec.arch,  # type: ignore[arg-type]
        in_channels=1,
        width=config.width,
        depth=config.depth,
        resampling="none",
        num_classes=classes,
        **plain,  # type: ignore[arg-type]
    )


def train_config(config: StudyConfig, spec: RunSpec, minutes_per_run: float | None) -> TrainConfig:
    from .recipes import DIGITS, PHOTOS
    from .training import TrainConfig

    recipe = DIGITS if spec.task == "digits" else PHOTOS
    epochs = config.epochs or MAX_EPOCHS
    return TrainConfig(
        epochs=epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        # Short runs (quick checks) would otherwise spend every step warming up.
        warmup_steps=min(50, max(1, epochs)),
        cls_weight=spec.cls_weight,
        sigma=(config.sigma, config.sigma),
        val_sigma=config.sigma,
        seed=spec.seed,
        minutes=minutes_per_run,
        device=config.device,
    )


def _limited(dataset: Dataset, limit: int | None) -> Dataset:
    from .data import ArraySource, EvalSet

    if limit is None:
        return dataset

    def cut(s: EvalSet) -> EvalSet:
        return EvalSet(s.clean[:limit], None if s.labels is None else s.labels[:limit])

    train = dataset.train
    if isinstance(train, ArraySource):
        labels = None if train.labels is None else train.labels[:limit]
        train = ArraySource(train.images[:limit], labels, train.num_classes)
    description = {**dataset.description, "limit": limit}
    return replace(dataset, train=train, val=cut(dataset.val), test=cut(dataset.test), description=description)


def load_study_data(config: StudyConfig, task: str) -> Dataset:
    """Digits (32x32, fixed split) or photo patches, both cut to `config.limit` when given."""
    from .data import load_dataset
    from .recipes import PHOTOS

    if task == "digits":
        dataset = load_dataset("digits", size=32, seed=0)
    elif task == "photos":
        per_epoch = config.limit or PHOTOS.patches_per_epoch
        dataset = load_dataset("photos", seed=0, patch_size=PHOTOS.patch_size, patches_per_epoch=per_epoch)
    else:
        raise ConfigError(f"unknown study task {task!r}")
    return _limited(dataset, config.limit)


# -- running -------------------------------------------------------------------------------------------


def _finished(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's metadata if this run already finished (its checkpoint holds test metrics)."""
    from .checkpoint import is_checkpoint, read_checkpoint_meta

    if not is_checkpoint(run_dir):
        return None
    meta = read_checkpoint_meta(run_dir)
    return meta if "test" in meta.get("metrics", {}) else None


def _check_same(run_dir: Path, meta: dict[str, Any], mc: ModelConfig, tc: TrainConfig) -> None:
    training = meta.get("training", {})
    same = (
        meta.get("model") == mc.to_dict()
        and training.get("cls_weight") == tc.cls_weight
        and training.get("seed") == tc.seed
    )
    if not same:
        raise ConfigError(
            f"{run_dir} holds a run trained with other settings (model, lambda or seed); "
            "use another --out for a study with different options, or delete that run folder"
        )


def run_record(spec: RunSpec, run_dir: Path, meta: dict[str, Any], reused: bool) -> dict[str, Any]:
    """One run's results, read from its checkpoint."""
    from .artifacts import read_json
    from .model import ModelConfig, build_model, count_macs, parameter_count
    from .training import saved_state_dir

    metrics = meta.get("metrics", {})
    test = metrics.get("test", {})
    model = build_model(ModelConfig.from_dict(meta["model"]))
    state_dir = saved_state_dir(run_dir)
    epochs = None
    if state_dir is not None:
        epochs = read_json(state_dir / "state.json", what="resume state").get("epochs")
    return {
        "name": spec.run_name,
        "config": spec.config_name,
        "arch": spec.arch,
        "task": spec.task,
        "lambda": spec.cls_weight,
        "seed": spec.seed,
        "dir": str(run_dir),
        "psnr_db": test.get("psnr_db"),
        "ssim": test.get("ssim"),
        "accuracy": test.get("accuracy"),
        "noisy_psnr_db": test.get("noisy_psnr_db"),
        "gates": metrics.get("gates", []),
        "parameters": parameter_count(model),
        "macs_per_pixel": round(count_macs(model, 64, 64).macs_per_pixel, 1),
        "train_time_s": metrics.get("train_time_s"),
        "epochs": epochs,
        "best_epoch": metrics.get("epoch"),
        "reused": reused,
    }


def run_study(config: StudyConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (or read back) every run, aggregate over seeds, check the claims, write JSON, Markdown, PNG."""
    from rich.console import Console

    from .training import saved_state_dir, train

    console = Console(quiet=not progress, highlight=False)
    specs = plan_runs(config)
    minutes_per_run = config.minutes / len(specs) if config.minutes is not None else None
    out = config.out
    datasets: dict[str, Dataset] = {}
    records = []
    with output_lock(out):
        for i, spec in enumerate(specs, start=1):
            run_dir = out / "runs" / spec.run_name
            mc, tc = model_config(config, spec), train_config(config, spec, minutes_per_run)
            meta = _finished(run_dir)
            if meta is not None:
                _check_same(run_dir, meta, mc, tc)
                console.print(f"[{i}/{len(specs)}] {spec.run_name}: finished earlier, read back")
                records.append(run_record(spec, run_dir, meta, reused=True))
                continue
            resume = saved_state_dir(run_dir) is not None
            budget = f", {minutes_per_run:.2f} min" if minutes_per_run else ""
            console.print(f"[{i}/{len(specs)}] {spec.run_name}{' (resuming)' if resume else ''}{budget}")
            if spec.task not in datasets:
                datasets[spec.task] = load_study_data(config, spec.task)
            train(mc, tc, datasets[spec.task], run_dir, resume=resume, progress=progress)
            meta = _finished(run_dir)
            if meta is None:  # train() always writes test metrics; this guards a changed contract
                raise ConfigError(f"{run_dir} has no test metrics after training")
            records.append(run_record(spec, run_dir, meta, reused=False))
        configs = aggregate(records)
        claims = [check_gate_claim(configs), check_competitive_claim(configs)]
        result = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "settings": {
                **config.to_dict(),
                "minutes_per_run": minutes_per_run,
                "archs": list(ARCHS),
                "psnr_tolerance_db": PSNR_TOLERANCE_DB,
                "accuracy_tolerance": ACCURACY_TOLERANCE,
            },
            "configs": configs,
            "claims": claims,
            "runs": records,
            "versions": package_versions("addunet-edge", "torch", "numpy"),
        }
        atomic_write_json(out / JSON_NAME, result)
        gates_figure(configs, out / GATES_NAME)
        atomic_write_text(out / MARKDOWN_NAME, markdown_report(result, GATES_NAME))
    return result


# -- aggregation and claims (pure) ----------------------------------------------------------------------


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """mean, std (sample std over seeds; 0 with one seed) and n of the finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return {"mean": float(np.mean(xs)), "std": std, "n": len(xs)}


def depth_ratio(gates: Sequence[float]) -> float | None:
    """mean of the deeper half of the gates / mean of the shallower half (middle level of an odd depth
    left out); None for a single level or a zero denominator."""
    g = [float(v) for v in gates]
    half = len(g) // 2
    if half == 0:
        return None
    shallow, deep = float(np.mean(g[:half])), float(np.mean(g[-half:]))
    return deep / shallow if shallow > 0 else None


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group runs by configuration (first-seen order): mean ± std over seeds of every metric and gate."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["config"], []).append(r)
    out = []
    for name, runs in groups.items():
        first = runs[0]
        levels = max((len(r["gates"]) for r in runs), default=0)
        gates = [stats([r["gates"][k] for r in runs if len(r["gates"]) > k]) for k in range(levels)]
        out.append(
            {
                "config": name,
                "arch": first["arch"],
                "task": first["task"],
                "lambda": first["lambda"],
                "seeds": [r["seed"] for r in runs],
                "psnr_db": stats([r["psnr_db"] for r in runs]),
                "ssim": stats([r["ssim"] for r in runs]),
                "accuracy": stats([r["accuracy"] for r in runs]),
                "gates": gates,
                "depth_ratio": stats([depth_ratio(r["gates"]) for r in runs]) if levels else stats([]),
                "parameters": first["parameters"],
                "macs_per_pixel": first["macs_per_pixel"],
                "train_time_s": stats([r.get("train_time_s") for r in runs]),
            }
        )
    return out


def _claim(cid: str, title: str, verdict: str, summary: str, details: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": cid, "title": title, "verdict": verdict, "summary": summary, "details": details}


GATE_CLAIM = "(a) multi-task training moves gate weight to deep skips"
COMPETITIVE_CLAIM = "(b) AddUNet competitive with fewer parameters"


def check_gate_claim(configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Claim (a): for every lambda > 0, AddUNet's mean depth ratio on digits exceeds the lambda = 0 one.

    'reproduced' when every difference is positive and (with several seeds) larger than the seed spread
    (root sum of squares of the two stds); 'not reproduced' when every difference is <= 0, likewise beyond
    the spread; otherwise 'inconclusive'."""
    rows = [c for c in configs if c["arch"] == "addunet" and c["task"] == "digits" and c["depth_ratio"]["n"]]
    base = next((c for c in rows if c["lambda"] == 0), None)
    others = sorted((c for c in rows if c["lambda"] > 0), key=lambda c: c["lambda"])
    if base is None or not others:
        return _claim(
            "a",
            GATE_CLAIM,
            "not testable",
            "needs AddUNet digits runs at lambda = 0 and at some lambda > 0 with at least two levels",
            [],
        )
    details = []
    for c in others:
        delta = c["depth_ratio"]["mean"] - base["depth_ratio"]["mean"]
        several = c["depth_ratio"]["n"] > 1 and base["depth_ratio"]["n"] > 1
        spread = math.hypot(c["depth_ratio"]["std"], base["depth_ratio"]["std"]) if several else None
        details.append(
            {
                "lambda": c["lambda"],
                "depth_ratio": c["depth_ratio"]["mean"],
                "depth_ratio_at_0": base["depth_ratio"]["mean"],
                "difference": delta,
                "seed_spread": spread,
                "beyond_spread": None if spread is None else abs(delta) > spread,
            }
        )
    up = all(d["difference"] > 0 for d in details)
    down = all(d["difference"] <= 0 for d in details)
    # With one seed there is no spread to compare against: the sign alone decides (and the text says so).
    clear = all(d["beyond_spread"] is not False for d in details)
    ratios = ", ".join(f"λ={d['lambda']:g}: {d['depth_ratio']:.3f}" for d in details)
    text = f"deep/shallow gate ratio {base['depth_ratio']['mean']:.3f} at λ=0 vs {ratios}"
    if up and clear:
        verdict = "reproduced"
    elif down and clear:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
        text += "; the differences are mixed in sign or within the seed spread"
    if any(d["seed_spread"] is None for d in details):
        text += " (one seed: no spread estimate)"
    return _claim("a", GATE_CLAIM, verdict, text, details)


def check_competitive_claim(configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Claim (b): per task, AddUNet PSNR >= ConcatUNet - 0.3 dB, accuracy >= ConcatUNet - 1 point, and
    fewer parameters. 'reproduced' only when every pair passes."""
    by_key = {(c["arch"], c["task"], c["lambda"]): c for c in configs}
    details = []
    for (arch, task, lam), add in by_key.items():
        concat = by_key.get(("concat", task, lam))
        if arch != "addunet" or concat is None:
            continue
        pa, pc = add["psnr_db"]["mean"], concat["psnr_db"]["mean"]
        aa, ac = add["accuracy"]["mean"], concat["accuracy"]["mean"]
        psnr_gap = None if pa is None or pc is None else pa - pc
        acc_gap = None if aa is None or ac is None else aa - ac
        checks = {
            "psnr": psnr_gap is not None and psnr_gap >= -PSNR_TOLERANCE_DB,
            "accuracy": acc_gap is None or acc_gap >= -ACCURACY_TOLERANCE,
            "fewer_parameters": add["parameters"] < concat["parameters"],
        }
        details.append(
            {
                "task": task,
                "lambda": lam,
                "psnr_gap_db": psnr_gap,
                "accuracy_gap": acc_gap,
                "parameters": [add["parameters"], concat["parameters"]],
                "checks": checks,
                "passed": all(checks.values()),
            }
        )
    if not details:
        return _claim("b", COMPETITIVE_CLAIM, "not testable", "needs AddUNet and ConcatUNet runs of one task", [])
    failed = [d for d in details if not d["passed"]]
    parts = []
    for d in details:
        where = "photos" if d["task"] == "photos" else f"digits λ={d['lambda']:g}"
        acc = "" if d["accuracy_gap"] is None else f", accuracy {100 * d['accuracy_gap']:+.1f} pt"
        psnr_text = "n/a" if d["psnr_gap_db"] is None else f"{d['psnr_gap_db']:+.2f} dB"
        parts.append(
            f"{where}: PSNR {psnr_text}{acc}, {d['parameters'][0]:,} vs {d['parameters'][1]:,} parameters"
            f"{'' if d['passed'] else ' [fails: ' + ', '.join(k for k, v in d['checks'].items() if not v) + ']'}"
        )
    verdict = "not reproduced" if failed else "reproduced"
    return _claim("b", COMPETITIVE_CLAIM, verdict, "AddUNet minus ConcatUNet: " + "; ".join(parts), details)


# -- reports -------------------------------------------------------------------------------------------


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
