"""The line-up of a bench run: the PyTorch baseline and every artifact opened side by side, one contender per
kind of timing each, and the shapes every one of them can take checked before anything is timed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..engines import Engine, backend_for, open_engine, options_for
from ..errors import ArtifactError, ConfigError, ShapeError
from ..plotting import unique_label
from .contenders import Contender, engine_label, lineage, timings_for
from .system import DeviceMemory, device_index


def open_contenders(
    artifacts: Sequence[str | Path | Engine],
    baseline: str | Path | None,
    device: str,
    threads: int,
    cuda_graph: bool,
    notes: list[str],
) -> tuple[list[Contender], list[Engine]]:
    """The baseline first, then every artifact; also returns the engines this run opened (to close). When
    opening one fails, the ones opened before it are closed again."""
    from ..checkpoint import is_checkpoint

    opened: list[Engine] = []
    try:
        baseline_path = Path(baseline) if baseline is not None else None
        if baseline_path is not None and not is_checkpoint(baseline_path):
            raise ArtifactError(f"--baseline must be a checkpoint folder (model.safetensors + config.json): {baseline}")
        items = _open_artifacts(artifacts, device, threads, cuda_graph, opened)
        baseline_path = _baseline_of(baseline_path, items, notes)
        return _contenders(items, baseline_path, device, threads, cuda_graph, opened), opened
    except BaseException:
        for engine in opened:
            engine.close()
        raise


# One artifact to time: its path, its engine when already open, the checkpoint it was made from and that
# checkpoint's model config.
_Item = tuple[Path, Engine | None, Path | None, dict[str, Any] | None]


def _open_artifacts(
    artifacts: Sequence[str | Path | Engine], device: str, threads: int, cuda_graph: bool, opened: list[Engine]
) -> list[_Item]:
    """Every artifact with its lineage; all but checkpoints are opened here (and added to `opened`)."""
    items: list[_Item] = []
    for item in artifacts:
        if isinstance(item, Engine):
            ckpt, model = lineage(item.path)
            items.append((item.path, item, ckpt, model))
        elif backend_for(item) == "torch":  # refuses a missing or unknown file before it is opened
            # A checkpoint is opened later, once it is known whether it is the baseline too.
            ckpt, model = lineage(item)
            items.append((Path(item), None, ckpt, model))
        else:
            # Opening verifies the file (manifest hash, ONNX decode, plan manifest), so a corrupt artifact is
            # refused as such rather than reported as an artifact without a baseline. Activation (the
            # session, the device memory it takes) waits for _contenders, which measures it.
            path = Path(item)
            engine = open_engine(path, **options_for(path, device, threads, cuda_graph))
            opened.append(engine)
            ckpt, model = lineage(path)
            items.append((path, engine, ckpt, model))
    return items


def _baseline_of(baseline_path: Path | None, items: list[_Item], notes: list[str]) -> Path:
    """The given baseline, else the first checkpoint an artifact was made from; a note for each artifact made
    from another checkpoint."""
    if baseline_path is None:
        found = [ckpt for _, _, ckpt, _ in items if ckpt is not None]
        if not found:
            raise ConfigError(
                "no PyTorch baseline: none of the artifacts is a checkpoint or names one in its manifest; "
                "pass --baseline CHECKPOINT_FOLDER"
            )
        baseline_path = found[0]
    for path, _, ckpt, _ in items:
        if ckpt is not None and ckpt.resolve() != baseline_path.resolve():
            notes.append(f"{path.name} was made from {ckpt}, not from the baseline {baseline_path}")
    return baseline_path


def _contenders(
    items: list[_Item], baseline_path: Path, device: str, threads: int, cuda_graph: bool, opened: list[Engine]
) -> list[Contender]:
    """The baseline's contenders, then each artifact's (the baseline is timed once, even when listed)."""
    taken: set[str] = set()
    baseline_engine = open_engine(baseline_path, device=device, threads=threads)
    opened.append(baseline_engine)
    _, baseline_model = lineage(baseline_path)
    label = unique_label(f"{baseline_path.name} (torch)", taken)
    contenders = _activated(baseline_path, baseline_engine, True, baseline_model, label, device, cuda_graph)
    for path, already_open, _, model in items:
        if already_open is not None:
            engine = already_open
        elif path.resolve() == baseline_path.resolve():
            continue  # the baseline is this artifact; it is timed once
        else:
            engine = open_engine(path, **options_for(path, device, threads, cuda_graph))
            opened.append(engine)
        label = unique_label(engine_label(path, engine.backend), taken)
        contenders += _activated(path, engine, False, model, label, device, cuda_graph)
    return contenders


def _activated(
    path: Path,
    engine: Engine,
    is_baseline: bool,
    model: dict[str, Any] | None,
    label: str,
    device: str,
    cuda_graph: bool,
) -> list[Contender]:
    """One contender per kind of timing of `engine`, activated here so the device memory it takes is measured."""
    base = None
    memory = DeviceMemory(device_index(device)) if device.startswith("cuda") else None
    if memory is not None and engine.backend != "torch":
        before = memory.used_bytes()
        engine.activate()
        after = memory.used_bytes()
        base = max(0, after - before) if before is not None and after is not None else None
    return [
        Contender(
            label=label,
            artifact=str(path),
            engine=engine,
            timing=timing,
            baseline=is_baseline,
            model_config=model,
            cuda_graph=cuda_graph and engine.backend == "tensorrt",
            device_base_bytes=base,
        )
        for timing in timings_for(engine.backend, device)
    ]


def check_shapes(contenders: Sequence[Contender], shapes: Sequence[tuple[int, int, int]]) -> int:
    """Refuse, before any timing, a shape some engine cannot take; returns the channel count."""
    channels = {c.label: c.engine.info.profile.channels for c in contenders}
    if len(set(channels.values())) != 1:
        raise ShapeError(f"the engines disagree on input channels: {channels}")
    c_in = next(iter(channels.values()))
    for contender in contenders:
        profile = contender.engine.info.profile
        for batch, height, width in shapes:
            try:
                profile.check((batch, c_in, height, width))
                m = profile.size_multiple
                if contender.backend == "tensorrt" and m > 1 and (height % m or width % m):
                    raise ShapeError(f"this plan needs height and width multiples of {m}, got {height}x{width}")
            except ShapeError as e:
                raise ShapeError(f"{contender.label} cannot be timed at batch {batch}, {height}x{width}: {e}") from None
    return c_in
