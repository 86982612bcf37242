"""What a training run keeps in its folder beside the best checkpoint: the per-epoch log (log.jsonl) and the
resume state (last/), saved so that a kill at any instant leaves a complete state to resume from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .artifacts import atomic_write_json, atomic_write_text, read_json, sha256_file
from .checkpoint import load_tensors, save_tensors
from .errors import CheckpointError, ConfigError
from .model import ModelConfig

if TYPE_CHECKING:
    from .training import TrainConfig

LAST = "last"
LOG = "log.jsonl"
# last/ holds two complete training states, last/a and last/b, and last/current.json naming the newer one.
# A save fills the slot the pointer does not name, then replaces the pointer: one atomic rename is the
# only moment the resume state changes, so a kill at any instant leaves a complete state to resume.
_SLOTS = ("a", "b")
_POINTER = "current.json"
_STATE = "state.json"
_STATE_FILES = ("model.safetensors", "optimizer.safetensors")


# --- the per-epoch log -----------------------------------------------------------------------------


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to the JSON-lines log."""
    # Appending one line with O_APPEND; a torn last line is skipped by read_log.
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The per-epoch JSON-lines log; a line torn by an interruption is skipped."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def trim_log(path: Path, epochs_done: int) -> None:
    """Keep the log records of the `epochs_done` epochs a resumed state holds, and nothing torn.

    A kill after an epoch was logged but before its state was saved makes the resumed run repeat that
    epoch, which would log it twice; a line torn by a kill would swallow the next record appended to it.
    """
    if not path.exists():
        return
    rows = [r for r in read_log(path) if isinstance(r, dict) and isinstance(r.get("epoch"), int)]
    rows = [r for r in rows if r["epoch"] <= epochs_done]
    kept = "".join(json.dumps(r) + "\n" for r in rows)
    if kept != path.read_text(encoding="utf-8"):
        atomic_write_text(path, kept)


def forget_state(out_dir: Path) -> None:
    """Remove the log and the resume state's pointer of an earlier run in `out_dir` (a fresh run starts).

    A kill before the fresh run's first save then cannot resume the old run under the new run's log.
    """
    last_dir = out_dir / LAST
    for stale in (out_dir / LOG, last_dir / _POINTER, last_dir / _STATE):
        stale.unlink(missing_ok=True)


# --- the resume state ------------------------------------------------------------------------------


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as flat named tensors (for safetensors) and the JSON-able rest."""
    sd = opt.state_dict()
    tensors = {f"state.{idx}.{k}": v for idx, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"], "state_keys": sorted(sd["state"].keys())}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state().tolist()}


def saved_state_dir(out_dir: str | Path) -> Path | None:
    """The folder holding the training state `train(..., resume=True)` continues from, or None if none.

    Only the pointer is read here; `load_last` verifies the state's hashes.
    """
    current = _current_state(Path(out_dir) / LAST)
    return current[0] if current is not None else None


def _current_state(folder: Path) -> tuple[Path, dict[str, Any] | None] | None:
    """(the slot the pointer of last/ names, the pointer), or (last/, None) for an older version's layout."""
    pointer_path = folder / _POINTER
    if pointer_path.exists():
        try:
            pointer = read_json(pointer_path, what="resume pointer")
        except Exception as e:
            raise CheckpointError(str(e)) from None
        slot = pointer.get("slot")
        if slot not in _SLOTS:
            raise CheckpointError(f"{pointer_path} names slot {slot!r}, expected one of {_SLOTS}; start a new run")
        return folder / slot, pointer
    if (folder / _STATE).exists():
        return folder, None  # written before the two slots existed: one state in last/ itself
    return None


def _fsync_dir(folder: Path) -> None:
    # The renames inside `folder` reach the disk before the pointer that names it does (power loss, not
    # only a kill, leaves a complete state). Not every platform can open a directory; there it is skipped.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot sync a directory: the kill guarantee holds regardless
        pass
    finally:
        os.close(fd)


def save_last(
    folder: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    mc: ModelConfig,
    tc: TrainConfig,
    epoch: int,
    epochs: int,
    step: int,
    best: float,
    elapsed_s: float,
) -> None:
    """Write the resume state into the slot of `folder` that does not hold the newest one, then point to it.

    Inside the slot: weights and optimizer tensors first, state.json (with their hashes) last, each atomic.
    Until the pointer is replaced, --resume reads the other slot, which this save never touches.
    """
    current = _current_state(folder)
    slot = folder / (_SLOTS[1] if current is not None and current[0].name == _SLOTS[0] else _SLOTS[0])
    slot.mkdir(parents=True, exist_ok=True)
    save_tensors(slot / "model.safetensors", model.state_dict())
    opt_tensors, opt_info = optimizer_tensors(opt)
    save_tensors(slot / "optimizer.safetensors", opt_tensors)
    atomic_write_json(
        slot / _STATE,
        {
            "model": mc.to_dict(),
            "training": tc.to_dict(),
            "epoch": epoch,
            "epochs": epochs,
            "step": step,
            "best_val_loss": best,
            "elapsed_s": elapsed_s,
            "optimizer": opt_info,
            "rng": _rng_state(),
            "sha256": {name: sha256_file(slot / name) for name in _STATE_FILES},
        },
    )
    _fsync_dir(slot)
    atomic_write_json(folder / _POINTER, {"slot": slot.name, "epoch": epoch, "step": step})
    _fsync_dir(folder)
    # The state of an older version, in last/ itself: the pointer has replaced it. Its state.json goes first,
    # so what is left of it never reads as a complete state.
    for name in (_STATE, *_STATE_FILES):
        if (folder / name).exists():
            (folder / name).unlink()


def load_last(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, mc: ModelConfig) -> dict[str, Any]:
    """Load the newest complete state of `folder` (last/) into `model` and `opt`; returns its state.json.

    The pointer names the newest complete slot (it is written only once its slot is complete); the slot's
    tensors must match the hashes in its state.json, and its epoch and step the pointer's.
    """
    current = _current_state(folder)
    if current is None:
        raise CheckpointError(f"nothing to resume: {folder} holds no saved training state")
    state_dir, pointer = current
    state_json = state_dir / _STATE
    try:
        state = read_json(state_json, what="resume state")
    except Exception as e:
        raise CheckpointError(str(e)) from None
    digests = state.get("sha256")
    required = ("model", "optimizer", "epoch", "epochs", "step", "best_val_loss", "rng")
    if any(k not in state for k in required) or not isinstance(digests, dict) or set(digests) != set(_STATE_FILES):
        raise CheckpointError(f"{state_json} is incomplete or not a resume state; start a new run")
    if pointer is not None and (pointer.get("epoch"), pointer.get("step")) != (state["epoch"], state["step"]):
        raise CheckpointError(
            f"{folder / _POINTER} names epoch {pointer.get('epoch')!r}, step {pointer.get('step')!r}, but "
            f"{state_json} holds epoch {state['epoch']!r}, step {state['step']!r}; start a new run"
        )
    try:
        same_model = ModelConfig.from_dict(state["model"]) == mc
    except ConfigError as e:
        raise CheckpointError(f"{state_json}: {e}") from None
    if not same_model:
        raise CheckpointError(f"{folder} was trained with another model config; resume with the same options")
    for name, digest in digests.items():
        if not (state_dir / name).exists() or sha256_file(state_dir / name) != digest:
            raise CheckpointError(
                f"{state_dir / name} does not match state.json (the file was changed or damaged after it was "
                "saved); the best checkpoint in the parent folder is intact, start a new run from it or retrain"
            )
    try:
        model.load_state_dict(load_tensors(state_dir / "model.safetensors"), strict=True)
        _load_optimizer(opt, load_tensors(state_dir / "optimizer.safetensors"), state["optimizer"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{folder} does not fit this model and optimizer ({e}); start a new run") from None
    return state
