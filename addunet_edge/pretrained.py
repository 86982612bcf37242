"""Models that ship inside the package, named instead of a path: `run photo.jpg`, `validate photos ...`.

Each is a checkpoint folder (model.safetensors + config.json, like any `train` output) under
addunet_edge/pretrained/<name>/, with the command that trained it, its training log and its `compare` report.
A path that exists always wins over a name, so a folder of your own called `photos` is still yours.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError

PRETRAINED_ROOT = Path(__file__).resolve().parent / "pretrained"
# name -> one line for --help and `info`
PRETRAINED: dict[str, str] = {
    "photos": "blind gray photo denoiser (sigma 5-55), trained on scikit-image's photographs",
}
DEFAULT_MODEL = "photos"  # what `run` uses when it is given no model


def pretrained_dir(name: str) -> Path:
    """The packaged checkpoint folder of `name`; an error that lists the names if it is not one of them."""
    from .checkpoint import CONFIG, WEIGHTS  # imports torch: only once a packaged model is asked for

    if name not in PRETRAINED:
        raise ArtifactError(f"no packaged model called {name!r}; the packaged models are: {', '.join(PRETRAINED)}")
    folder = PRETRAINED_ROOT / name
    missing = [f for f in (WEIGHTS, CONFIG) if not (folder / f).is_file()]
    if missing:
        raise ArtifactError(
            f"the packaged model {name!r} is incomplete ({', '.join(missing)} missing from {folder}): "
            "reinstall addunet-edge"
        )
    return folder


def resolve_model(spec: Path) -> Path:
    """A path that exists is itself; a bare packaged name (`photos`) is that model's checkpoint folder."""
    if spec.exists() or str(spec) not in PRETRAINED:
        return spec
    return pretrained_dir(str(spec))


def resolve_models(specs: list[Path] | None) -> list[Path] | None:
    """resolve_model for each of a list argument (bench's artifacts)."""
    return None if specs is None else [resolve_model(s) for s in specs]
