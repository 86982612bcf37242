"""Our denoiser and its artifacts against classical denoisers (BM3D, NL-means, TV, wavelet) on held-out photos.

Protocol: every held-out photograph (whole, or a centre crop with `crop`) gets one seeded noisy copy per
sigma, and every method sees that same noisy image. Outputs are clipped to [0, 1], as they would be when
written as an image, then scored with `metrics.psnr` / `metrics.ssim`. Time is the wall time of one call
on one image, after one untimed warm-up call per model (session and allocator start-up are not counted).

Baselines and their settings: `classical_denoisers`. Reports (table, Markdown, figure): `compare_report`.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import package_versions
from .classical_denoisers import (
    BASELINE_FUNCTIONS,
    BASELINE_LABELS,
    BASELINES,
    TV_WEIGHTS,
    Denoise,
    require_bm3d,
    tv_weight,
)
from .data import PHOTO_SPLITS, add_noise, load_photo
from .engines.ensemble import LABEL as ENSEMBLE_LABEL
from .engines.ensemble import SelfEnsemble
from .errors import AddUNetEdgeError, ConfigError, MissingDependencyError, ShapeError
from .metrics import psnr, ssim
from .plotting import unique_label

SCHEMA = "addunet-edge/compare"
SCHEMA_VERSION = 1
DEFAULT_IMAGES: tuple[str, ...] = PHOTO_SPLITS["test"]
DEFAULT_SIGMAS: tuple[float, ...] = (15.0, 25.0, 50.0)
FIGURE_CROP = 128  # side of the detail window shown in crops.png
REFERENCE_IMAGE = "camera"  # where "does the checkpoint beat BM3D?" is asked (the paper's usual test image)


# -- results -------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One method on one image at one sigma."""

    method: str
    image: str
    sigma: float
    psnr_db: float
    ssim: float
    seconds: float


@dataclass
class Method:
    name: str  # unique row label
    kind: str  # 'checkpoint' | 'artifact' | 'baseline' | 'noisy'
    source: str  # path of the checkpoint / artifact, or the baseline's key
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompareResult:
    images: list[str]
    sigmas: list[float]
    seed: int
    crop: int | None
    in_channels: int
    methods: list[Method]
    cells: list[Cell]
    skipped: dict[str, str]  # method -> why it has no rows
    shapes: dict[str, list[int]]  # image -> [C, H, W] as compared
    # For the figure: the detail window (y, x, size) of `figure_image`, and every method's output there,
    # kept while comparing so nothing (BM3D above all) is computed twice. Not part of the JSON.
    figure_image: str = ""
    window: tuple[int, int, int] = (0, 0, 0)
    crops: dict[tuple[str, float], np.ndarray] = field(default_factory=dict)
    self_ensemble: bool = False  # each engine also ran as a self-ensemble ("+x8" methods)

    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    def values(self, method: str, sigma: float, metric: str) -> list[float]:
        return [getattr(c, metric) for c in self.cells if c.method == method and c.sigma == sigma]

    def mean(self, method: str, sigma: float, metric: str) -> float:
        vals = self.values(method, sigma, metric)
        return float(np.mean(vals)) if vals else math.nan

    def cell(self, method: str, image: str, sigma: float) -> Cell | None:
        for c in self.cells:
            if c.method == method and c.image == image and c.sigma == sigma:
                return c
        return None

    @property
    def checkpoint_method(self) -> str | None:
        return next((m.name for m in self.methods if m.kind == "checkpoint"), None)

    def beats_bm3d(self) -> list[dict[str, Any]]:
        """Per image and sigma: the checkpoint's PSNR against BM3D's on the same noisy image, and whether it is
        higher (camera first, the paper's usual test image)."""
        ours = self.checkpoint_method
        bm3d = BASELINE_LABELS["bm3d"]
        rows = []
        for image in sorted(self.images, key=lambda name: name != REFERENCE_IMAGE):
            for sigma in self.sigmas:
                a = self.cell(ours, image, sigma) if ours else None
                b = self.cell(bm3d, image, sigma)
                if a is None or b is None:
                    continue
                rows.append(
                    {
                        "image": image,
                        "sigma": sigma,
                        "model_psnr_db": a.psnr_db,
                        "bm3d_psnr_db": b.psnr_db,
                        "margin_db": a.psnr_db - b.psnr_db,
                        "beats_bm3d": a.psnr_db > b.psnr_db,
                    }
                )
        return rows

    def best(self, sigma: float, metric: str) -> str | None:
        """The method with the highest mean `metric` at `sigma` (the noisy input excluded)."""
        scored = [
            (self.mean(m.name, sigma, metric), m.name)
            for m in self.methods
            if m.kind != "noisy" and not math.isnan(self.mean(m.name, sigma, metric))
        ]
        return max(scored)[1] if scored else None

    def to_dict(self) -> dict[str, Any]:
        summary = {
            m.name: {
                f"{s:g}": {
                    "psnr_db": _finite(self.mean(m.name, s, "psnr_db")),
                    "ssim": _finite(self.mean(m.name, s, "ssim")),
                    "seconds": _finite(self.mean(m.name, s, "seconds")),
                }
                for s in self.sigmas
            }
            for m in self.methods
        }
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "protocol": {
                "images": self.images,
                "shapes": self.shapes,
                "sigmas": self.sigmas,
                "seed": self.seed,
                "crop": self.crop,
                "in_channels": self.in_channels,
                "noise": "additive white Gaussian, sigma on the 0-255 scale, not clipped; one noisy copy "
                "per (image, sigma), shared by every method",
                "scoring": "outputs clipped to [0, 1]; PSNR and SSIM from addunet_edge.metrics; seconds = "
                "wall time of one call on one image (a self-ensemble's: its 8 engine calls, one per transform)",
                "tv_weights": [list(p) for p in TV_WEIGHTS],
            },
            "methods": [asdict(m) for m in self.methods],
            "skipped": self.skipped,
            "self_ensemble": self.self_ensemble,
            "results": [{**asdict(c), "psnr_db": _finite(c.psnr_db), "ssim": _finite(c.ssim)} for c in self.cells],
            "summary": summary,
            "beats_bm3d": self.beats_bm3d(),
            "versions": package_versions("addunet-edge", "torch", "onnxruntime", "scikit-image", "bm3d"),
        }


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# -- the comparison ------------------------------------------------------------------------------------


def clean_images(names: Sequence[str], channels: int, crop: int | None = None) -> dict[str, np.ndarray]:
    """The named bundled photos as (C, H, W) float32, centre-cropped to crop x crop when asked."""
    out = {}
    for name in names:
        img = load_photo(name, channels)
        if crop:
            if crop < 8:
                raise ConfigError(f"--crop must be at least 8 pixels, got {crop}")
            h, w = img.shape[1:]
            ch, cw = min(crop, h), min(crop, w)
            y, x = (h - ch) // 2, (w - cw) // 2
            img = np.ascontiguousarray(img[:, y : y + ch, x : x + cw])
        out[name] = img
    return out


def noisy_copy(clean: np.ndarray, name: str, sigma: float, seed: int) -> np.ndarray:
    """The one noisy copy of image `name` at `sigma` that every method sees (seeded by all three)."""
    rng = np.random.default_rng([int(seed), round(sigma * 1000), zlib.crc32(name.encode())])
    return add_noise(clean, sigma, rng)


def _engine_denoiser(engine: Any) -> Denoise:
    def run(noisy: np.ndarray, sigma: float) -> np.ndarray:
        return np.asarray(engine(noisy[None]).denoised[0])

    return run


def compare(
    checkpoint: str | Path,
    artifacts: Sequence[str | Path] = (),
    *,
    images: Sequence[str] = DEFAULT_IMAGES,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    baselines: Sequence[str] = BASELINES,
    seed: int = 0,
    crop: int | None = None,
    engine_options: Callable[[Path], dict[str, Any]] | None = None,
    progress: bool = True,
    self_ensemble: bool = False,
) -> CompareResult:
    """Score the checkpoint, its artifacts and the classical baselines on the same noisy photos.

    `self_ensemble` adds, after the checkpoint and after each artifact, the same engine run as a test-time
    self-ensemble (`engines.ensemble.SelfEnsemble`, named with "+x8"), scored and timed like every method.
    """
    unknown = [b for b in baselines if b not in BASELINE_FUNCTIONS]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    if not images:
        raise ConfigError("no image to compare on")
    if not sigmas or any(s <= 0 for s in sigmas):
        raise ConfigError(f"sigmas must be positive, got {list(sigmas)}")
    options = engine_options or (lambda path: {})

    ckpt, lineup = Path(checkpoint), _Lineup(self_ensemble=self_ensemble)
    try:
        lineup.open(ckpt, "checkpoint", options(ckpt))
        for path in map(Path, artifacts):
            lineup.open(path, "artifact", options(path))
        lineup.add_baselines(baselines, sigmas)
        cleans = clean_images(images, lineup.channels, crop)
        figure_image = REFERENCE_IMAGE if REFERENCE_IMAGE in cleans else next(iter(cleans))
        y, x, size = window = detail_window(cleans[figure_image], FIGURE_CROP)
        scoring = _Scoring(lineup, figure_image, window)
        scoring.run(cleans, sigmas, seed, progress)
    finally:
        lineup.close()
    skipped, cells = lineup.skipped, scoring.cells
    # A method that failed part-way keeps no rows: a mean over a subset of images would mislead.
    failed = {m for m in skipped if any(c.method == m for c in cells)}
    cells = [c for c in cells if c.method not in failed]
    return CompareResult(
        images=list(cleans),
        sigmas=[float(s) for s in sigmas],
        seed=seed,
        crop=crop,
        in_channels=lineup.channels,
        methods=[m for m in lineup.methods if m.name not in skipped],
        cells=cells,
        skipped=skipped,
        shapes={k: list(v.shape) for k, v in cleans.items()},
        figure_image=figure_image,
        window=window,
        crops={**{("clean", s): cleans[figure_image][:, y : y + size, x : x + size] for s in sigmas}, **scoring.crops},
        self_ensemble=self_ensemble,
    )


@dataclass
class _Lineup:
    """The methods compared, in row order (the noisy input first), what runs each, and the engines opened."""

    methods: list[Method] = field(default_factory=list)
    denoisers: dict[str, Denoise] = field(default_factory=dict)
    engines: list[Any] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it has no rows
    taken: set[str] = field(default_factory=set)
    warmed: set[str] = field(default_factory=set)
    channels: int = 0
    self_ensemble: bool = False

    def open(self, path: Path, kind: str, options: dict[str, Any]) -> None:
        """The checkpoint (it sets the channel count) or an artifact of it, as a method run by its engine."""
        from .engines import open_engine

        engine = open_engine(path, **options)
        self.engines.append(engine)
        info = engine.info
        if kind == "checkpoint":
            self.channels = info.profile.channels
        elif info.profile.channels != self.channels:
            raise ConfigError(
                f"{path} takes {info.profile.channels} channel(s), the checkpoint {self.channels}: "
                "compare artifacts made from this checkpoint"
            )
        name = unique_label(f"{path.name} ({info.backend} {info.precision})", self.taken)
        self.methods.append(Method(name, kind, str(path), {"engine": info.to_dict()}))
        self.denoisers[name] = _engine_denoiser(engine)
        if self.self_ensemble:
            self.add_ensemble(engine, f"{name} {ENSEMBLE_LABEL}", kind, path)

    def add_ensemble(self, engine: Any, label: str, kind: str, path: Path) -> None:
        """`engine` as a self-ensemble, one more method; skipped with the reason where its profile cannot turn."""
        name = unique_label(label, self.taken)
        try:
            ensemble = SelfEnsemble(engine, batch=1)  # one call per transform: the faster on a CPU
        except ShapeError as e:
            self.methods.append(Method(name, kind, str(path)))
            self.skipped[name] = f"{type(e).__name__}: {e}"
            return
        self.methods.append(Method(name, kind, str(path), {"engine": ensemble.info.to_dict()}))
        self.denoisers[name] = _engine_denoiser(ensemble)

    def add_baselines(self, baselines: Sequence[str], sigmas: Sequence[float]) -> None:
        """The classical denoisers (BM3D skipped with a note when its package is missing), then the noisy input."""
        for key in baselines:
            label = unique_label(BASELINE_LABELS[key], self.taken)
            if key == "bm3d":
                try:
                    require_bm3d()
                except MissingDependencyError as e:
                    self.skipped[label] = str(e)
                    continue
            details = {"tv_weight_by_sigma": {f"{s:g}": tv_weight(s) for s in sigmas}} if key == "tv" else {}
            self.methods.append(Method(label, "baseline", key, details))
            self.denoisers[label] = BASELINE_FUNCTIONS[key]
        noisy_label = unique_label("noisy input", self.taken)
        self.methods.insert(0, Method(noisy_label, "noisy", "-"))

    def denoise(self, method: Method, noisy: np.ndarray, sigma: float) -> tuple[np.ndarray | None, float]:
        """(output, seconds) of one method on one image; (None, 0) and the method skipped when it fails."""
        fn = self.denoisers[method.name]
        try:
            if method.kind != "baseline" and method.name not in self.warmed:
                fn(noisy, sigma)  # warm-up: sessions, allocators and kernels start here
                self.warmed.add(method.name)
            t0 = time.perf_counter()
            out = fn(noisy, sigma)
            return out, time.perf_counter() - t0
        except AddUNetEdgeError as e:
            # An artifact whose profile cannot take this image: say so, keep the others.
            self.skipped[method.name] = f"{type(e).__name__}: {e}"
            return None, 0.0

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


class _Scoring:
    """Every method on every (image, sigma): the cells, and the figure image's detail crops as they go by."""

    def __init__(self, lineup: _Lineup, figure_image: str, window: tuple[int, int, int]) -> None:
        self.lineup, self.figure_image, self.window = lineup, figure_image, window
        self.cells: list[Cell] = []
        self.crops: dict[tuple[str, float], np.ndarray] = {}

    def keep(
        self, method_name: str, image: str, sigma: float, out: np.ndarray, clean: np.ndarray, seconds: float = 0.0
    ) -> None:
        self.cells.append(Cell(method_name, image, sigma, psnr(out, clean), ssim(out, clean), seconds))
        if image == self.figure_image:
            y, x, size = self.window
            self.crops[(method_name, sigma)] = np.clip(out[:, y : y + size, x : x + size], 0.0, 1.0).copy()

    def run(self, cleans: dict[str, np.ndarray], sigmas: Sequence[float], seed: int, progress: bool) -> None:
        from .progress import progress_bar

        lineup = self.lineup
        noisy_label = lineup.methods[0].name
        total = len(cleans) * len(sigmas) * (len(lineup.methods) - 1)
        with progress_bar(progress, transient=False) as bar:
            task = bar.add_task("[bold]compare[/]", total=total)
            for image, clean in cleans.items():
                for sigma in sigmas:
                    noisy = noisy_copy(clean, image, sigma, seed)
                    self.keep(noisy_label, image, sigma, noisy, clean)
                    for method in lineup.methods[1:]:
                        if method.name not in lineup.skipped:
                            bar.update(task, description=f"[bold]compare[/] {method.name} on {image}, sigma {sigma:g}")
                            out, seconds = lineup.denoise(method, noisy, sigma)
                            if out is not None:
                                self.keep(method.name, image, sigma, np.clip(out, 0.0, 1.0), clean, seconds)
                        bar.advance(task)


def detail_window(clean: np.ndarray, size: int) -> tuple[int, int, int]:
    """(y, x, size) of the size x size window of `clean` (C, H, W) with the most edge energy: where
    denoisers differ most visibly."""
    gray = clean.mean(axis=0)
    h, w = gray.shape
    size = min(size, h, w)
    gy, gx = np.gradient(gray)
    energy = np.hypot(gy, gx)
    step = max(1, size // 4)
    best, where = -1.0, (0, 0)
    for y in range(0, h - size + 1, step):
        for x in range(0, w - size + 1, step):
            e = float(energy[y : y + size, x : x + size].mean())
            if e > best:
                best, where = e, (y, x)
    return where[0], where[1], size
