"""Checkpoints: a folder with model.safetensors and config.json; no pickle is ever loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .artifacts import atomic_path, atomic_write_json, package_versions, read_json, sha256_file
from .errors import CheckpointError, ConfigError
from .model import AddUNet, ConcatUNet, ModelConfig, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "addunet-edge-checkpoint"
FORMAT_VERSION = 1


def is_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (contiguous CPU copies of every tensor)."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def save_checkpoint(folder: str | Path, model: nn.Module, **sections: Any) -> Path:
    """Write weights, then config.json carrying the weights' sha256 (so a torn pair is detected)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.config  # type: ignore[assignment]
    save_tensors(folder / WEIGHTS, model.state_dict(), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
        **sections,
        "weights_sha256": sha256_file(folder / WEIGHTS),
        "versions": package_versions("addunet-edge", "torch", "numpy", "safetensors"),
    }
    atomic_write_json(folder / CONFIG, meta)
    return folder


def read_checkpoint_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder (expected {CONFIG} and {WEIGHTS} inside)")
    try:
        meta = read_json(folder / CONFIG, what="checkpoint config")
    except Exception as e:
        raise CheckpointError(str(e)) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG} is not an addunet-edge checkpoint config")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} has checkpoint format {meta.get('format_version')}, this version reads {FORMAT_VERSION}"
        )
    return meta


def load_checkpoint(
    folder: str | Path, *, device: str | torch.device = "cpu", verify_hash: bool = True
) -> tuple[AddUNet | ConcatUNet, dict[str, Any]]:
    """Rebuild the model from config.json and load its weights strictly; returns (model in eval mode, meta)."""
    folder = Path(folder)
    meta = read_checkpoint_meta(folder)
    try:
        config = ModelConfig.from_dict(meta.get("model", {}))
    except (ConfigError, TypeError, ValueError) as e:  # config.json is untrusted input: any bad value
        raise CheckpointError(f"{folder / CONFIG}: invalid model config ({e})") from None
    weights = folder / WEIGHTS
    if verify_hash and weights.exists():
        actual = sha256_file(weights)
        if actual != meta.get("weights_sha256"):
            raise CheckpointError(
                f"{weights} does not match the sha256 recorded in {CONFIG}: the pair is torn or tampered; "
                "re-save the checkpoint or restore both files together"
            )
    state = load_tensors(weights)
    try:
        model = build_model(config)
    except (ConfigError, TypeError, ValueError, RuntimeError) as e:  # e.g. a fractional width in the JSON
        raise CheckpointError(f"{folder / CONFIG}: cannot build the model it describes ({e})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit the {config.arch} described in {CONFIG}: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{weights}: tensor {k} has shape {tuple(state[k].shape)}, the config needs {tuple(v.shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, meta


def checkpoint_info(folder: str | Path) -> dict[str, Any]:
    """What `info` shows: config, parameter count, MACs per pixel, gates and stored metrics."""
    from .model import count_macs, gate_values, parameter_count

    model, meta = load_checkpoint(folder)
    cfg = model.config
    macs = count_macs(model, 64, 64)
    metrics = meta.get("metrics", {})
    info: dict[str, Any] = {
        "arch": cfg.arch,
        "config": cfg.to_dict(),
        "parameters": parameter_count(model),
        "macs_per_pixel": round(macs.macs_per_pixel, 1),
        "gates (shallow→deep)": gate_values(model),
        "dataset": meta.get("data", {}).get("dataset"),
        "training": meta.get("training", {}),
    }
    for split in ("val", "test"):
        if split in metrics:
            info[f"{split} metrics"] = metrics[split]
    if "train_time_s" in metrics:
        info["train_time_s"] = metrics["train_time_s"]
    return info
