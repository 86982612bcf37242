"""The paper's study in one call: AddUNet vs ConcatUNet, denoise-only and multi-task, over seeds, with claim checks.

Runs (all at the same width and depth, full-rate, sigma 25):

- `<arch>-digits-l<lambda>` for every lambda: multi-task on digits (lambda = 0 trains denoising alone, with
  no classifier), the setting where the paper reads its gates;
- `<arch>-photos`: denoise-only on photo patches, scored on the held-out photos (camera, coins, astronaut).

Every run's checkpoint is DIR/runs/<config>-s<seed>; a run whose checkpoint already holds test metrics is
read back, not retrained, and an interrupted one resumes from its last epoch.

Claims checked: `study_claims` (pure functions over the aggregated results). Reports: `study_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifacts import atomic_write_json, atomic_write_text, output_lock, package_versions
from .errors import ConfigError
from .study_claims import ACCURACY_TOLERANCE, PSNR_TOLERANCE_DB, aggregate, check_competitive_claim, check_gate_claim
from .study_report import GATES_NAME, JSON_NAME, MARKDOWN_NAME, gates_figure, markdown_report

if TYPE_CHECKING:
    from .data import Dataset
    from .model import ModelConfig
    from .training import TrainConfig

SCHEMA = "addunet-edge/study"
SCHEMA_VERSION = 1
ARCHS = ("addunet", "concat")
BLOCKS = ("paper", "deploy")
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
    from .training_state import saved_state_dir

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

    from .training import train
    from .training_state import saved_state_dir

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
