"""Our denoiser and its artifacts against classical denoisers (BM3D, NL-means, TV, wavelet) on held-out photos.

Protocol: every held-out photograph (whole, or a centre crop with `crop`) gets one seeded noisy copy per
sigma, and every method sees that same noisy image. Outputs are clipped to [0, 1], as they would be when
written as an image, then scored with `metrics.psnr` / `metrics.ssim`. Time is the wall time of one call
on one image, after one untimed warm-up call per model (session and allocator start-up are not counted).

Baseline settings (all are given the true sigma, as BM3D is; sigma on the 0-1 scale below):

- bm3d: the `bm3d` package (optional extra 'baselines'), `bm3d.bm3d(..., sigma_psd=sigma)`; `bm3d_rgb`
  for colour (it denoises in an opponent colour space).
- nlm: scikit-image `denoise_nl_means`, patch_size 5, patch_distance 6, h = 0.8 sigma, fast_mode=True,
  sigma given (the settings scikit-image's own gallery uses for this noise model).
- tv: `denoise_tv_chambolle`, weight from TV_WEIGHTS (interpolated in sigma), run to 200 iterations
  (eps=1e-12): the default stopping rule halts early at erratic points and made PSNR jump by up to 2 dB
  between neighbouring weights. The weights were picked by a grid search on 256x256 crops of four
  training photos (chelsea, clock, coffee, rocket), never on the test photos.
- wavelet: `denoise_wavelet`, BayesShrink, soft thresholds, sigma given, YCbCr for colour.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .artifacts import atomic_write_json, atomic_write_text, package_versions
from .data import PHOTO_SPLITS, add_noise, load_photo
from .errors import AddUNetEdgeError, ConfigError, MissingDependencyError
from .metrics import psnr, ssim
from .plotting import pyplot, save_figure, unique_label

if TYPE_CHECKING:
    from rich.table import Table

SCHEMA = "addunet-edge/compare"
SCHEMA_VERSION = 1
DEFAULT_IMAGES: tuple[str, ...] = PHOTO_SPLITS["test"]
DEFAULT_SIGMAS: tuple[float, ...] = (15.0, 25.0, 50.0)
BASELINES: tuple[str, ...] = ("bm3d", "nlm", "tv", "wavelet")
JSON_NAME = "compare.json"
MARKDOWN_NAME = "compare.md"
FIGURE_NAME = "crops.png"
FIGURE_CROP = 128  # side of the detail window shown in crops.png
REFERENCE_IMAGE = "camera"  # where "does the checkpoint beat BM3D?" is asked (the paper's usual test image)

# sigma (0-255) -> TV weight; measured best on training-photo crops (see module docstring). Beyond 50 the
# weight is extrapolated in proportion to sigma.
TV_WEIGHTS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (5.0, 0.012), (15.0, 0.06), (25.0, 0.10), (50.0, 0.22))

Denoise = Callable[[np.ndarray, float], np.ndarray]  # (C, H, W) noisy, sigma 0-255 -> (C, H, W)


def tv_weight(sigma: float) -> float:
    """TV weight for noise sigma (0-255 scale): the measured table, interpolated linearly."""
    xs, ys = zip(*TV_WEIGHTS, strict=True)
    if sigma <= xs[-1]:
        return float(np.interp(sigma, xs, ys))
    return ys[-1] * sigma / xs[-1]


# -- classical baselines: (C, H, W) float32 in, (C, H, W) out ---------------------------------------------


def _hwc(image: np.ndarray) -> tuple[np.ndarray, int | None]:
    """(C, H, W) -> (H, W) for gray or (H, W, 3) with channel_axis -1 for colour, as scikit-image wants."""
    if image.shape[0] == 1:
        return image[0].astype(np.float64), None
    return np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float64), -1


def _chw(result: np.ndarray) -> np.ndarray:
    result = np.asarray(result, dtype=np.float32)
    return result[None] if result.ndim == 2 else np.ascontiguousarray(result.transpose(2, 0, 1))


def denoise_bm3d(noisy: np.ndarray, sigma: float) -> np.ndarray:
    bm3d = require_bm3d()
    img, axis = _hwc(noisy)
    if axis is None:
        return _chw(bm3d.bm3d(img, sigma_psd=sigma / 255.0))
    return _chw(bm3d.bm3d_rgb(img, sigma_psd=sigma / 255.0))


def denoise_nlm(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    img, axis = _hwc(noisy)
    s = sigma / 255.0
    return _chw(
        denoise_nl_means(img, patch_size=5, patch_distance=6, h=0.8 * s, sigma=s, fast_mode=True, channel_axis=axis)
    )


def denoise_tv(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    img, axis = _hwc(noisy)
    return _chw(denoise_tv_chambolle(img, weight=tv_weight(sigma), eps=1e-12, max_num_iter=200, channel_axis=axis))


def denoise_wavelet_bayes(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    img, axis = _hwc(noisy)
    return _chw(
        denoise_wavelet(
            img,
            sigma=sigma / 255.0,
            method="BayesShrink",
            mode="soft",
            rescale_sigma=True,
            channel_axis=axis,
            convert2ycbcr=axis is not None,
        )
    )


BASELINE_FUNCTIONS: dict[str, Denoise] = {
    "bm3d": denoise_bm3d,
    "nlm": denoise_nlm,
    "tv": denoise_tv,
    "wavelet": denoise_wavelet_bayes,
}
BASELINE_LABELS = {"bm3d": "BM3D", "nlm": "NL-means", "tv": "TV (Chambolle)", "wavelet": "Wavelet (BayesShrink)"}


def require_bm3d() -> Any:
    from . import _lazy

    return _lazy.require("bm3d", "the BM3D baseline of `compare`")


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

    def beats_bm3d(self, image: str = REFERENCE_IMAGE) -> list[dict[str, Any]]:
        """Per sigma on `image`: the checkpoint's PSNR against BM3D's, and whether it is higher."""
        ours = self.checkpoint_method
        bm3d = BASELINE_LABELS["bm3d"]
        rows = []
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
                "wall time of one call on one image",
                "tv_weights": [list(p) for p in TV_WEIGHTS],
            },
            "methods": [asdict(m) for m in self.methods],
            "skipped": self.skipped,
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
) -> CompareResult:
    """Score the checkpoint, its artifacts and the classical baselines on the same noisy photos."""
    from .engines import open_engine
    from .progress import progress_bar

    unknown = [b for b in baselines if b not in BASELINE_FUNCTIONS]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    if not images:
        raise ConfigError("no image to compare on")
    if not sigmas or any(s <= 0 for s in sigmas):
        raise ConfigError(f"sigmas must be positive, got {list(sigmas)}")
    options = engine_options or (lambda path: {})

    taken: set[str] = set()
    methods: list[Method] = []
    denoisers: dict[str, Denoise] = {}
    engines: list[Any] = []
    skipped: dict[str, str] = {}
    try:
        ckpt = Path(checkpoint)
        engine = open_engine(ckpt, **options(ckpt))
        engines.append(engine)
        info = engine.info
        channels = info.profile.channels
        name = unique_label(f"{ckpt.name} ({info.backend} {info.precision})", taken)
        methods.append(Method(name, "checkpoint", str(ckpt), {"engine": info.to_dict()}))
        denoisers[name] = _engine_denoiser(engine)
        for path in map(Path, artifacts):
            engine = open_engine(path, **options(path))
            engines.append(engine)
            info = engine.info
            if info.profile.channels != channels:
                raise ConfigError(
                    f"{path} takes {info.profile.channels} channel(s), the checkpoint {channels}: "
                    "compare artifacts made from this checkpoint"
                )
            name = unique_label(f"{path.name} ({info.backend} {info.precision})", taken)
            methods.append(Method(name, "artifact", str(path), {"engine": info.to_dict()}))
            denoisers[name] = _engine_denoiser(engine)
        for key in baselines:
            label = unique_label(BASELINE_LABELS[key], taken)
            if key == "bm3d":
                try:
                    require_bm3d()
                except MissingDependencyError as e:
                    skipped[label] = str(e)
                    continue
            details = {"tv_weight_by_sigma": {f"{s:g}": tv_weight(s) for s in sigmas}} if key == "tv" else {}
            methods.append(Method(label, "baseline", key, details))
            denoisers[label] = BASELINE_FUNCTIONS[key]
        noisy_label = unique_label("noisy input", taken)
        methods.insert(0, Method(noisy_label, "noisy", "-"))

        cleans = clean_images(images, channels, crop)
        figure_image = REFERENCE_IMAGE if REFERENCE_IMAGE in cleans else next(iter(cleans))
        y, x, size = window = detail_window(cleans[figure_image], FIGURE_CROP)
        crops: dict[tuple[str, float], np.ndarray] = {}

        def keep(method_name: str, image: str, sigma: float, out: np.ndarray) -> None:
            if image == figure_image:
                crops[(method_name, sigma)] = np.clip(out[:, y : y + size, x : x + size], 0.0, 1.0).copy()

        cells: list[Cell] = []
        total = len(cleans) * len(sigmas) * (len(methods) - 1)
        warmed: set[str] = set()
        with progress_bar(progress, transient=False) as bar:
            task = bar.add_task("[bold]compare[/]", total=total)
            for image, clean in cleans.items():
                for sigma in sigmas:
                    noisy = noisy_copy(clean, image, sigma, seed)
                    cells.append(Cell(noisy_label, image, sigma, psnr(noisy, clean), ssim(noisy, clean), 0.0))
                    keep(noisy_label, image, sigma, noisy)
                    for method in methods[1:]:
                        if method.name in skipped:
                            bar.advance(task)
                            continue
                        bar.update(task, description=f"[bold]compare[/] {method.name} on {image}, sigma {sigma:g}")
                        fn = denoisers[method.name]
                        try:
                            if method.kind != "baseline" and method.name not in warmed:
                                fn(noisy, sigma)  # warm-up: sessions, allocators and kernels start here
                                warmed.add(method.name)
                            t0 = time.perf_counter()
                            out = fn(noisy, sigma)
                            seconds = time.perf_counter() - t0
                        except AddUNetEdgeError as e:
                            # An artifact whose profile cannot take this image: say so, keep the others.
                            skipped[method.name] = f"{type(e).__name__}: {e}"
                            bar.advance(task)
                            continue
                        out = np.clip(out, 0.0, 1.0)
                        cells.append(Cell(method.name, image, sigma, psnr(out, clean), ssim(out, clean), seconds))
                        keep(method.name, image, sigma, out)
                        bar.advance(task)
    finally:
        for engine in engines:
            engine.close()
    # A method that failed part-way keeps no rows: a mean over a subset of images would mislead.
    failed = {m for m in skipped if any(c.method == m for c in cells)}
    cells = [c for c in cells if c.method not in failed]
    return CompareResult(
        images=list(cleans),
        sigmas=[float(s) for s in sigmas],
        seed=seed,
        crop=crop,
        in_channels=channels,
        methods=[m for m in methods if m.name not in skipped],
        cells=cells,
        skipped=skipped,
        shapes={k: list(v.shape) for k, v in cleans.items()},
        figure_image=figure_image,
        window=window,
        crops={**{("clean", s): cleans[figure_image][:, y : y + size, x : x + size] for s in sigmas}, **crops},
    )


# -- reports -------------------------------------------------------------------------------------------


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def summary_table(result: CompareResult) -> Table:
    """Rows: methods; columns: PSNR / SSIM per sigma (mean over images) and time per image; best in bold."""
    from rich.markup import escape
    from rich.table import Table

    shape = ", ".join(f"{k} {v[1]}x{v[2]}" for k, v in result.shapes.items())
    table = Table(title=f"compare: mean over {shape}; seed {result.seed}")
    table.add_column("method", style="bold", no_wrap=True)
    for s in result.sigmas:
        table.add_column(f"σ={s:g}\nPSNR dB / SSIM", justify="right", no_wrap=True)
    table.add_column("s/img", justify="right", no_wrap=True)
    for m in result.methods:
        row = [escape(m.name)]
        for s in result.sigmas:
            parts = []
            for metric, spec in (("psnr_db", ".2f"), ("ssim", ".4f")):
                text = _fmt(result.mean(m.name, s, metric), spec)
                parts.append(f"[bold green]{text}[/]" if result.best(s, metric) == m.name else text)
            row.append(" / ".join(parts))
        times = [c.seconds for c in result.cells if c.method == m.name]
        row.append("-" if m.kind == "noisy" else _fmt(float(np.mean(times)) if times else math.nan, ".3f"))
        table.add_row(*row)
    return table


def bm3d_verdict_lines(result: CompareResult) -> list[str]:
    """One line per sigma: does the checkpoint beat BM3D on camera?"""
    rows = result.beats_bm3d()
    if not rows:
        why = result.skipped.get(BASELINE_LABELS["bm3d"])
        if why:
            return [f"BM3D was skipped ({why}), so the model was not compared with it."]
        return [f"No BM3D comparison on {REFERENCE_IMAGE} (not among the images or not run)."]
    return [
        f"{REFERENCE_IMAGE}, sigma {r['sigma']:g}: model {r['model_psnr_db']:.2f} dB vs BM3D "
        f"{r['bm3d_psnr_db']:.2f} dB -> {'beats' if r['beats_bm3d'] else 'does NOT beat'} BM3D "
        f"({r['margin_db']:+.2f} dB)"
        for r in rows
    ]


def markdown_report(result: CompareResult, figure: str | None = FIGURE_NAME) -> str:
    lines = [
        "# Denoiser comparison",
        "",
        f"Images: {', '.join(f'{k} ({v[1]}x{v[2]}, {v[0]} ch)' for k, v in result.shapes.items())}; "
        f"sigmas {', '.join(f'{s:g}' for s in result.sigmas)} (0-255 scale); noise seed {result.seed}. "
        "Every method sees the same noisy image; outputs are clipped to [0, 1]. Best per column in bold.",
        "",
        "## Mean over images",
        "",
    ]
    header = ["method"] + [f"σ={s:g} PSNR dB / SSIM" for s in result.sigmas] + ["s / image"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in result.methods:
        row = [m.name]
        for s in result.sigmas:
            p = _fmt(result.mean(m.name, s, "psnr_db"), ".2f")
            q = _fmt(result.mean(m.name, s, "ssim"), ".4f")
            p = f"**{p}**" if result.best(s, "psnr_db") == m.name else p
            q = f"**{q}**" if result.best(s, "ssim") == m.name else q
            row.append(f"{p} / {q}")
        times = [c.seconds for c in result.cells if c.method == m.name]
        row.append("-" if m.kind == "noisy" or not times else f"{np.mean(times):.3f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Per image (PSNR dB / SSIM)", ""]
    header = ["method", "image"] + [f"σ={s:g}" for s in result.sigmas]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in result.methods:
        for image in result.images:
            row = [m.name, image]
            for s in result.sigmas:
                c = result.cell(m.name, image, s)
                row.append("-" if c is None else f"{_fmt(c.psnr_db, '.2f')} / {_fmt(c.ssim, '.4f')}")
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## Against BM3D", ""] + [f"- {line}" for line in bm3d_verdict_lines(result)]
    if result.skipped:
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in result.skipped.items()]
    lines += [
        "",
        "## Baseline settings",
        "",
        "- BM3D: `bm3d` package, sigma_psd = sigma / 255 (bm3d_rgb for colour).",
        "- NL-means: scikit-image, patch 5, distance 6, h = 0.8 sigma, fast mode, true sigma.",
        "- TV: Chambolle, weight by sigma "
        + ", ".join(f"{s:g}: {tv_weight(s):.3f}" for s in result.sigmas)
        + " (tuned on training photos), 200 iterations.",
        "- Wavelet: BayesShrink, soft thresholds, true sigma (YCbCr for colour).",
    ]
    if figure:
        lines += ["", f"![crops]({figure})"]
    return "\n".join(lines) + "\n"


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


def crops_figure(result: CompareResult, path: str | Path) -> Path:
    """PNG: one row per sigma; clean, noisy and each method's output on the detail window of the figure
    image. Titles carry the whole-image PSNR (the tables' number); the best of a row is bold."""
    plt = pyplot()

    image, (_, _, size) = result.figure_image, result.window
    methods = [m.name for m in result.methods]
    columns = ["clean", *methods]
    rows = len(result.sigmas)
    fig, axes = plt.subplots(rows, len(columns), figsize=(2.3 * len(columns), 2.95 * rows), squeeze=False)
    cmap = "gray" if result.in_channels == 1 else None
    for r, sigma in enumerate(result.sigmas):
        scored = [c.psnr_db for m in result.methods[1:] if (c := result.cell(m.name, image, sigma)) is not None]
        top = max(scored) if scored else math.inf
        for k, name in enumerate(columns):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            tile = result.crops.get((name, sigma))
            if tile is None:  # a method that failed on this image
                ax.set_title(_short(name), fontsize=8.5)
                continue
            ax.imshow(tile[0] if tile.shape[0] == 1 else tile.transpose(1, 2, 0), cmap=cmap, vmin=0, vmax=1)
            c = result.cell(name, image, sigma)
            if name == "clean":
                title, bold = f"clean ({image})\nσ = {sigma:g}", False
            else:
                title = f"{_short(name)}\n{c.psnr_db:.2f} dB" if c else _short(name)
                bold = c is not None and k > 1 and c.psnr_db >= top
            ax.set_title(title, fontsize=8.5, fontweight="bold" if bold else "normal")
    fig.suptitle(f"{image}: {size}x{size} detail crop; titles give whole-image PSNR (best in bold)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def write_reports(result: CompareResult, folder: str | Path) -> dict[str, Path]:
    """compare.json, compare.md and crops.png in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / JSON_NAME, "markdown": folder / MARKDOWN_NAME, "figure": folder / FIGURE_NAME}
    atomic_write_json(paths["json"], result.to_dict())
    crops_figure(result, paths["figure"])
    atomic_write_text(paths["markdown"], markdown_report(result, FIGURE_NAME))
    return paths
