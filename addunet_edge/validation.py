"""Drift of every artifact (ONNX fp32 / fp16 / int8, TensorRT plans) against the PyTorch checkpoint it came from."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import Provenance, trace_provenance
from .errors import ArtifactError, CheckpointError, ConfigError, DataError, ShapeError
from .metrics import Drift
from .progress import progress_bar
from .validation_results import DEFAULT_BUDGETS, ArtifactSummary, Budget, Row, Samples, ValidationResult

log = logging.getLogger(__name__)

DEFAULT_SIGMAS: tuple[float, ...] = (15.0, 25.0, 50.0)
# Crops shown in crops.png: this many images, cut to at most this size around their centre.
SAMPLE_IMAGES = 3
SAMPLE_CROP = 96


# -- provenance: does an artifact belong to the checkpoint? ----------------------------------------------


def _normalise_config(d: Mapping[str, Any]) -> dict[str, Any]:
    from .model import ModelConfig

    try:
        return ModelConfig.from_dict(dict(d)).to_dict()
    except ConfigError:
        return dict(d)  # compared key by key below, which names what differs


def check_compatible(
    checkpoint: Path,
    config: Mapping[str, Any],
    weights_sha256: str | None,
    artifact: Path,
    prov: Provenance,
    info_channels: int,
    info_classes: int,
) -> list[str]:
    """Raise ArtifactError if `artifact` was not made from a model like `checkpoint`'s; return warnings."""
    problems: list[str] = []
    ref = _normalise_config(config)
    if prov.model is not None:
        got = _normalise_config(prov.model)
        for key in sorted(set(ref) | set(got)):
            if ref.get(key) != got.get(key):
                problems.append(f"{key} {got.get(key)!r} (artifact) vs {ref.get(key)!r} (checkpoint)")
    channels = prov.in_channels if prov.in_channels is not None else info_channels
    classes = prov.num_classes if prov.num_classes is not None else info_classes
    if channels != ref["in_channels"] and not any(p.startswith("in_channels") for p in problems):
        problems.append(f"in_channels {channels} (artifact) vs {ref['in_channels']} (checkpoint)")
    if classes != ref["num_classes"] and not any(p.startswith("num_classes") for p in problems):
        problems.append(f"num_classes {classes} (artifact) vs {ref['num_classes']} (checkpoint)")
    if problems:
        raise ArtifactError(
            f"{artifact} does not belong to checkpoint {checkpoint}: {'; '.join(problems)}. "
            "Export (and calibrate / build) it again from this checkpoint, or pass the checkpoint it came from"
        )
    warnings: list[str] = []
    if prov.broken is not None:
        warnings.append(
            f"{artifact}: cannot trace it back to a checkpoint ({prov.broken}); only its channels and classes "
            "were checked against the checkpoint"
        )
    elif prov.weights_sha256 and weights_sha256 and prov.weights_sha256 != weights_sha256:
        warnings.append(
            f"{artifact} was exported from other weights (sha256 {prov.weights_sha256[:12]}…) than {checkpoint} "
            f"({weights_sha256[:12]}…): a re-trained checkpoint? Its drift then compares two trainings"
        )
    return warnings


# -- data --------------------------------------------------------------------------------------------


def _load_eval_set(
    dataset: str | Path | None, meta: Mapping[str, Any], in_channels: int, num_classes: int, limit: int | None
) -> tuple[Any, dict[str, Any]]:
    from .data import EvalSet, load_dataset

    data_meta = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    from_checkpoint = dataset is None
    source = data_meta.get("source") if from_checkpoint else str(dataset)
    if not source:
        raise DataError("the checkpoint records no dataset: pass --dataset digits|photos|PATH")
    size = int(data_meta.get("size", 32))
    # The held-out split depends on the seed the checkpoint was trained with, not on the noise seed.
    split_seed = int(data_meta.get("seed", 0))
    try:
        ds = load_dataset(source, size=size, in_channels=in_channels, seed=split_seed, num_classes=num_classes or None)
    except DataError as e:
        if from_checkpoint:
            raise DataError(f"{e} (the dataset recorded in the checkpoint); pass --dataset to choose another") from None
        raise
    test = ds.test
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        test = EvalSet(test.clean[:limit], None if test.labels is None else test.labels[:limit])
    labels = test.labels if num_classes > 0 else None
    test = EvalSet(test.clean, labels)
    description = {
        "source": str(source),
        "name": ds.name,
        "split": "test",
        "split_seed": split_seed,
        "images": len(test),
        "image_shape": list(test.clean.shape[1:]),
        "labels": labels is not None,
    }
    return test, description


# -- running engines ---------------------------------------------------------------------------------


def _run(engine: Any, noisy: np.ndarray, batch: int, advance: Any) -> tuple[np.ndarray, np.ndarray]:
    outs, logits = [], []
    for i in range(0, len(noisy), batch):
        pred = engine(noisy[i : i + batch])
        outs.append(np.asarray(pred.denoised, dtype=np.float32))
        logits.append(np.asarray(pred.logits, dtype=np.float32))
        advance()
    return np.concatenate(outs), np.concatenate(logits)


def _engine_batch(profile: Any, batch: int, n: int, shape: tuple[int, int, int], artifact: Path) -> int:
    """The batch this engine runs at (capped by its profile), checked against the profile before inference."""
    b = min(batch, n)
    if profile.max_batch is not None:
        b = min(b, int(profile.max_batch))
    last = n % b or b
    try:
        for size in {b, last}:
            profile.check((size, *shape))
    except ShapeError as e:
        raise ArtifactError(
            f"{artifact} cannot run the test images: {e}. Rebuild it with a profile that covers "
            f"batch {last}..{b} at {shape[1]}x{shape[2]}, or choose another --batch-size / --dataset"
        ) from None
    return b


def _sample_indices(clean: np.ndarray) -> np.ndarray:
    """The most textured images (largest spread of the centre crop): flat sky shows nothing of the drift."""
    spread = _crop(clean).reshape(len(clean), -1).std(axis=1)
    return np.sort(np.argsort(-spread, kind="stable")[:SAMPLE_IMAGES])


def _crop(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[-2:]
    ch, cw = min(h, SAMPLE_CROP), min(w, SAMPLE_CROP)
    y, z = (h - ch) // 2, (w - cw) // 2
    return x[..., y : y + ch, z : z + cw]


def _metrics(
    den: np.ndarray,
    logits: np.ndarray,
    clean: np.ndarray,
    labels: np.ndarray | None,
    ref: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[dict[str, float], Drift]:
    """The row's figures and its score against the reference (itself for the reference row)."""
    from .metrics import max_abs_error, score_outputs, ssim

    reference = (den, logits) if ref is None else ref
    score = score_outputs(reference, (den, logits), clean, labels)
    figures = {
        "psnr_db": float(score.psnr_db),  # type: ignore[arg-type]  # clean images are always given here
        "ssim": ssim(np.clip(den, 0.0, 1.0), clean),
        "accuracy": score.accuracy,
        "psnr_drift_db": float(score.psnr_drift_db),  # type: ignore[arg-type]
        "fidelity_psnr_db": score.fidelity_psnr_db,
        "max_abs_error": score.max_abs_error,
        "logits_max_abs_error": max_abs_error(logits, reference[1]),
        "accuracy_change_pt": score.accuracy_change_pt,
        "agreement": score.agreement,
    }
    return figures, score


def validate(
    checkpoint: str | Path,
    artifacts: Sequence[str | Path],
    *,
    dataset: str | Path | None = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    limit: int | None = None,
    batch: int = 64,
    seed: int = 0,
    budgets: Mapping[str, Budget] | Budget | None = None,
    progress: bool = True,
    engine_options: Mapping[str, Mapping[str, Any]] | None = None,
    self_ensemble: bool = False,
) -> ValidationResult:
    """Run the checkpoint (PyTorch, the reference) and every artifact on the same noisy test images.

    `dataset` defaults to the one recorded in the checkpoint; the held-out test split is used. Noise is
    seeded by `seed` per sigma, so every engine sees identical inputs. `budgets` maps a precision to its
    Budget (default DEFAULT_BUDGETS) or is one Budget for all. `engine_options` maps a backend name
    ('torch', 'onnxruntime', 'tensorrt') to options for open_engine. Artifacts that do not belong to the
    checkpoint raise ArtifactError before any inference; budget failures are reported in the result
    (`result.passed`), not raised. `self_ensemble` runs every engine, the reference included, as an
    `engines.ensemble.SelfEnsemble` (about 8x the time): drift then compares ensemble with ensemble, and
    `result.self_ensemble` gives the reference's PSNR, accuracy and time with and without it per sigma.
    """
    from .engines import backend_for, open_engine
    from .engines.ensemble import SelfEnsemble

    checkpoint = Path(checkpoint)
    sigma_list = tuple(float(s) for s in sigmas)
    if not sigma_list or any(s < 0 for s in sigma_list):
        raise ConfigError(f"sigmas must be a non-empty list of values >= 0, got {list(sigmas)}")
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if backend_for(checkpoint) != "torch":
        raise CheckpointError(f"{checkpoint} is not a checkpoint folder: the reference must be a PyTorch checkpoint")
    table = (
        {p: budgets for p in DEFAULT_BUDGETS}
        if isinstance(budgets, Budget)
        else dict(DEFAULT_BUDGETS if budgets is None else budgets)
    )
    options = {k: dict(v) for k, v in (engine_options or {}).items()}

    with contextlib.ExitStack() as stack:
        ref_engine = stack.enter_context(open_engine(checkpoint, **options.get("torch", {})))
        config = ref_engine.model.config.to_dict()
        engines, warnings = _open_checked(stack, checkpoint, ref_engine, [Path(a) for a in artifacts], table, options)
        if self_ensemble:
            engines = [replace(e, engine=SelfEnsemble(e.engine, batch=batch)) for e in engines]
        test, description = _load_eval_set(
            dataset, ref_engine.meta, config["in_channels"], config["num_classes"], limit
        )
        n = len(test)
        batches = [_engine_batch(e.engine.info.profile, batch, n, tuple(test.clean.shape[1:]), e.path) for e in engines]
        run = _Pass(test, sigma_list, seed, _sample_indices(test.clean))
        ref_passes = 2 if self_ensemble else 1  # with the ensemble, the plain reference runs too, for its gain
        total = len(sigma_list) * (ref_passes * -(-n // min(batch, n)) + sum(-(-n // b) for b in batches))
        with progress_bar(progress) as bar:
            task = bar.add_task("PyTorch reference", total=total)
            advance = lambda: bar.advance(task)  # noqa: E731
            reference = run.ensemble_reference if self_ensemble else run.reference
            reference(checkpoint, ref_engine, min(batch, n), advance)
            for opened, b in zip(engines, batches, strict=True):
                bar.update(task, description=f"{opened.path.name} ({opened.engine.info.backend}, {opened.precision})")
                run.artifact(opened, table[opened.precision], b, advance)
                opened.engine.close()  # free its session now rather than at the end
    return ValidationResult(
        checkpoint=str(checkpoint),
        dataset=description,
        sigmas=sigma_list,
        seed=seed,
        rows=run.rows,
        artifacts=run.summaries,
        budgets=table,
        warnings=warnings,
        samples=run.samples(),
        self_ensemble=run.ensemble,
    )


@dataclass
class _Opened:
    path: Path
    engine: Any
    precision: str
    target: str | None


def _open_checked(
    stack: contextlib.ExitStack,
    checkpoint: Path,
    ref_engine: Any,
    paths: list[Path],
    table: Mapping[str, Budget],
    options: Mapping[str, Mapping[str, Any]],
) -> tuple[list[_Opened], list[str]]:
    """Open every artifact and check it against the checkpoint before anything runs; returns the warnings."""
    from .engines import backend_for, open_engine

    config = ref_engine.model.config.to_dict()
    weights_sha = ref_engine.info.source_sha256
    opened: list[_Opened] = []
    warnings: list[str] = []
    for path in paths:
        engine = stack.enter_context(open_engine(path, **options.get(backend_for(path), {})))
        info = engine.info
        manifest = getattr(engine, "manifest", None)
        if info.backend == "torch":
            prov = Provenance(
                model=engine.model.config.to_dict(),
                in_channels=info.profile.channels,
                num_classes=info.num_classes,
                weights_sha256=info.source_sha256,
                chain=[path.name],
            )
        else:
            prov = trace_provenance(path, manifest)
        warnings += check_compatible(
            checkpoint, config, weights_sha, path, prov, info.profile.channels, info.num_classes
        )
        precision = str(info.precision)
        if precision not in table:
            raise ConfigError(f"no drift budget for precision {precision!r} of {path}; known: {sorted(table)}")
        target = (manifest or {}).get("target") if isinstance(manifest, dict) else None
        opened.append(_Opened(path, engine, precision, target))
    for w in warnings:
        log.warning(w)
    return opened, warnings


class _Pass:
    """The reference, then each artifact, on the same seeded noisy images at every sigma."""

    def __init__(self, test: Any, sigmas: tuple[float, ...], seed: int, picks: np.ndarray) -> None:
        self.test, self.sigmas, self.picks = test, sigmas, picks
        self.noisy = {sigma: test.noisy(sigma, seed) for sigma in sigmas}
        self.sample_sigma = min(sigmas, key=lambda s: abs(s - 25.0))
        self.refs: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self.rows: list[Row] = []
        self.summaries: list[ArtifactSummary] = []
        self.sample_outputs: list[np.ndarray] = []
        self.seconds: dict[float, float] = {}  # the reference's inference time per sigma
        self.ensemble: dict[str, Any] | None = None

    def reference(self, checkpoint: Path, engine: Any, batch: int, advance: Any) -> None:
        test, rows = self.test, []
        for sigma in self.sigmas:
            start = time.perf_counter()
            den, logits = _run(engine, self.noisy[sigma], batch, advance)
            self.seconds[sigma] = time.perf_counter() - start
            m, _ = _metrics(den, logits, test.clean, test.labels, None)
            self.refs[sigma] = (den, logits)
            rows.append(
                Row.from_metrics(
                    checkpoint, engine.info, "fp32", None, sigma, len(test), self.noisy[sigma], test.clean, m, True
                )
            )
            if sigma == self.sample_sigma:
                self.sample_outputs.append(_crop(den[self.picks]))
        self.rows += rows
        self.summaries.append(
            ArtifactSummary.from_rows(checkpoint, engine.info, "fp32", None, None, rows, reference=True)
        )

    def ensemble_reference(self, checkpoint: Path, plain: Any, batch: int, advance: Any) -> None:
        """The reference as a self-ensemble (its row), then without, for what the ensemble gains and costs."""
        from .engines.ensemble import DIHEDRAL, LABEL, SelfEnsemble

        ensemble = SelfEnsemble(plain, batch=batch)
        first = self.noisy[self.sigmas[0]][:1]
        for engine in (plain, ensemble):
            engine(first)  # an untimed warm-up of both, so that neither time includes start-up
        self.reference(checkpoint, ensemble, batch, advance)
        without = {}
        for sigma, row in zip(self.sigmas, self.rows[-len(self.sigmas) :], strict=True):
            start = time.perf_counter()
            den, logits = _run(plain, self.noisy[sigma], batch, advance)
            seconds = time.perf_counter() - start
            m, _ = _metrics(den, logits, self.test.clean, self.test.labels, None)
            without[f"{sigma:g}"] = {
                "psnr_db": row.psnr_db,
                "psnr_db_without": m["psnr_db"],
                "gain_db": row.psnr_db - m["psnr_db"],
                "ssim": row.ssim,
                "ssim_without": m["ssim"],
                "accuracy": row.accuracy,
                "accuracy_without": m["accuracy"],
                "seconds": self.seconds[sigma],
                "seconds_without": seconds,
                "time_ratio": self.seconds[sigma] / seconds if seconds > 0 else math.nan,
            }
        self.ensemble = {"transforms": len(DIHEDRAL), "label": LABEL, "reference": without}

    def artifact(self, opened: _Opened, budget: Budget, batch: int, advance: Any) -> None:
        test, info, rows = self.test, opened.engine.info, []
        for sigma in self.sigmas:
            den, logits = _run(opened.engine, self.noisy[sigma], batch, advance)
            m, score = _metrics(den, logits, test.clean, test.labels, self.refs[sigma])
            row = Row.from_metrics(
                opened.path, info, opened.precision, opened.target, sigma, len(test), self.noisy[sigma], test.clean, m
            )
            row.budget = budget
            row.passed = not score.breaks(budget.max_psnr_drift_db, budget.max_acc_drop_pt)
            rows.append(row)
            if sigma == self.sample_sigma:
                self.sample_outputs.append(_crop(den[self.picks]))
        self.rows += rows
        self.summaries.append(
            ArtifactSummary.from_rows(opened.path, info, opened.precision, opened.target, budget, rows)
        )

    def samples(self) -> Samples:
        return Samples(
            sigma=self.sample_sigma,
            clean=_crop(self.test.clean[self.picks]),
            noisy=_crop(self.noisy[self.sample_sigma][self.picks]),
            outputs=self.sample_outputs,
        )
