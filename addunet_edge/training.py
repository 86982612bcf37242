"""The multi-task training loop: MSE + lambda * CE, AdamW, warm-up + cosine, checkpoints, exact resume, DDP."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import atomic_write_json, atomic_write_text, output_lock, read_json, sha256_file
from .checkpoint import load_checkpoint, load_tensors, save_checkpoint, save_tensors
from .data import Dataset, EvalSet
from .errors import CheckpointError, ConfigError
from .metrics import accuracy, psnr, ssim
from .model import ModelConfig, build_model, gate_values, parameter_count

LAST = "last"
LOG = "log.jsonl"
# last/ holds two complete training states, last/a and last/b, and last/current.json naming the newer one.
# A save fills the slot the pointer does not name, then replaces the pointer: one atomic rename is the
# only moment the resume state changes, so a kill at any instant leaves a complete state to resume.
_SLOTS = ("a", "b")
_POINTER = "current.json"
_STATE = "state.json"
_STATE_FILES = ("model.safetensors", "optimizer.safetensors")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings, stored in the checkpoint next to the model config."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 1e-4
    warmup_steps: int = 50  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.02
    grad_clip: float = 1.0  # max global gradient norm
    cls_weight: float = 0.1  # lambda in L = MSE + lambda * CE; 0 trains denoising alone
    sigma: tuple[float, float] = (25.0, 25.0)  # noise sigma range (0-255 scale); lo < hi = blind training
    val_sigma: float = 25.0
    seed: int = 0
    minutes: float | None = None  # time budget: the epoch count is re-planned after every epoch
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", tuple(float(s) for s in self.sigma))
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.cls_weight < 0:
            raise ConfigError(f"cls_weight must be >= 0, got {self.cls_weight}")
        if len(self.sigma) != 2 or self.sigma[0] < 0 or self.sigma[1] < self.sigma[0]:
            raise ConfigError(f"sigma must be (lo, hi) with 0 <= lo <= hi, got {self.sigma}")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"minutes must be positive, got {self.minutes}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sigma"] = list(self.sigma)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "sigma" in kw:
            kw["sigma"] = tuple(kw["sigma"])
        return cls(**kw)


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at optimizer step `step` (0-based): a pure function, so resume needs no scheduler state."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def plan_epochs(tc: TrainConfig, epoch: int, elapsed_s: float, last_epoch_s: float) -> int:
    """Epoch count for a --minutes budget, re-planned after every epoch (0-based `epoch` just finished).

    The time left is divided by the last epoch's time (validation included), so a machine whose load
    changes during the run neither overshoots the budget nor stops far short of it (planning once from
    the first epoch did both: 52 min for 30 under rising load, 14 min for 30 when the load went away).
    The count goes into last/, so a resumed run keeps planning from there.
    """
    if tc.minutes is None:
        return tc.epochs
    left_s = tc.minutes * 60.0 - elapsed_s
    more = int(left_s / max(last_epoch_s, 1e-6)) if left_s > 0 else 0
    return max(epoch + 1, min(tc.epochs, epoch + 1 + more))


def _sigmas(n: int, sigma: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    lo, hi = sigma
    return np.full(n, lo, np.float32) if lo == hi else rng.uniform(lo, hi, size=n).astype(np.float32)


@torch.no_grad()
def predict(
    model: nn.Module, noisy: np.ndarray, batch_size: int = 64, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` over (N, C, H, W) noisy images in batches -> (denoised, logits) as numpy."""
    was_training = model.training
    model.eval()
    outs, logits = [], []
    for i in range(0, len(noisy), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(noisy[i : i + batch_size])).to(device)
        d, lg = model(x)
        outs.append(d.cpu().numpy())
        logits.append(lg.cpu().numpy())
    model.train(was_training)
    return np.concatenate(outs), np.concatenate(logits)


def evaluate(
    model: nn.Module, eval_set: EvalSet, sigma: float, seed: int, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """PSNR / SSIM / accuracy of `model` on seeded noisy copies of `eval_set`, plus the noisy input's PSNR."""
    noisy = eval_set.noisy(sigma, seed)
    denoised, logits = predict(model, noisy, device=device)
    denoised = np.clip(denoised, 0.0, 1.0)  # scored as the image a user would see
    out = {
        "sigma": sigma,
        "psnr_db": psnr(denoised, eval_set.clean),
        "ssim": ssim(denoised, eval_set.clean),
        "noisy_psnr_db": psnr(noisy, eval_set.clean),
    }
    if eval_set.labels is not None and logits.shape[1] > 0:
        out["accuracy"] = accuracy(logits, eval_set.labels)
    return out


class _Dist:
    """torchrun's environment, if any: rank, world size, and whether this process writes files."""

    def __init__(self, device: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights only: decaying the gates would pull every alpha towards
    softplus(0) = 0.69 regardless of the data, and decaying norms and biases only hurts."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and name != "gate_logits" else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and write the checkpoint folder `out_dir` (best) and `out_dir/last` (for --resume).

    Every epoch's data order and noise come from a generator seeded by (seed, epoch), so a run resumed
    at an epoch boundary reproduces the uninterrupted run exactly.
    """
    out_dir = Path(out_dir)
    mc, tc = model_config, train_config
    if mc.in_channels != dataset.in_channels:
        raise ConfigError(
            f"model has {mc.in_channels} input channel(s), dataset {dataset.name} has {dataset.in_channels}"
        )
    if mc.num_classes and dataset.num_classes and mc.num_classes != dataset.num_classes:
        raise ConfigError(f"model has {mc.num_classes} classes, dataset {dataset.name} has {dataset.num_classes}")
    dist = _Dist(tc.device)
    device = torch.device(tc.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        from .errors import DeviceError

        raise DeviceError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    lock = output_lock(out_dir) if dist.main else None
    if lock is not None:
        lock.__enter__()
    try:
        return _train(mc, tc, dataset, out_dir, device, dist, resume, progress)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
        dist.close()


def _train(
    mc: ModelConfig,
    tc: TrainConfig,
    dataset: Dataset,
    out_dir: Path,
    device: torch.device,
    dist: _Dist,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    torch.manual_seed(tc.seed)
    model = build_model(mc).to(device)
    use_cls = mc.num_classes > 0 and tc.cls_weight > 0 and dataset.num_classes > 0
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
    steps_per_epoch = math.ceil(len(dataset.train) / (tc.batch_size * dist.world))
    epochs = tc.epochs
    start_epoch, step, best = 0, 0, math.inf
    elapsed_before = 0.0
    last_dir = out_dir / LAST
    if resume:
        state = _load_last(last_dir, model, opt, mc)
        start_epoch, step, best = state["epoch"] + 1, state["step"], state["best_val_loss"]
        epochs = state["epochs"]
        elapsed_before = state.get("elapsed_s", 0.0)
        torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
        if dist.main:
            _trim_log(out_dir / LOG, start_epoch)
    elif dist.main:
        # A fresh run starts a fresh log and forgets the old run's state, so a kill before its first
        # save cannot resume the old run under the new run's log.
        for stale in (out_dir / LOG, last_dir / _POINTER, last_dir / _STATE):
            stale.unlink(missing_ok=True)
    ddp_model: nn.Module = model
    if dist.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(model)

    description = {
        "dataset": dataset.name,
        **dataset.description,
        "in_channels": dataset.in_channels,
        "num_classes": dataset.num_classes,
    }
    t0 = time.perf_counter() - elapsed_before
    summary: dict[str, Any] = {}
    columns = (
        TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not (progress and dist.main), transient=False) as bar:
        task = bar.add_task("train", total=None, epoch=start_epoch + 1, status="")
        epoch = start_epoch
        while epoch < epochs:
            epoch_start = time.perf_counter()
            rng = np.random.default_rng([tc.seed, epoch])
            clean, labels = dataset.train.epoch(rng)
            sig = _sigmas(len(clean), tc.sigma, rng)
            noise = rng.standard_normal(clean.shape, dtype=np.float32)
            noisy = clean + noise * (sig / np.float32(255.0))[:, None, None, None]
            # Each rank takes its own contiguous share of the same shuffled epoch.
            share = slice(dist.rank, None, dist.world)
            clean, noisy = clean[share], noisy[share]
            labels = labels[share] if labels is not None else None
            model.train()
            bar.update(task, total=steps_per_epoch * epochs, completed=step, epoch=f"{epoch + 1}/{epochs}")
            run_loss, n_batches = 0.0, 0
            for i in range(0, len(clean), tc.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(noisy[i : i + tc.batch_size])).to(device)
                y = torch.from_numpy(np.ascontiguousarray(clean[i : i + tc.batch_size])).to(device)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, steps_per_epoch * epochs, tc)
                denoised, logits = ddp_model(x)
                loss = F.mse_loss(denoised, y)
                if use_cls and labels is not None:
                    lab = torch.from_numpy(labels[i : i + tc.batch_size]).to(device)
                    loss = loss + tc.cls_weight * F.cross_entropy(logits, lab)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                step += 1
                run_loss += float(loss.detach())
                n_batches += 1
                bar.update(task, completed=step, status=f"loss {run_loss / n_batches:.5f}")
            epoch_time = time.perf_counter() - epoch_start
            val = evaluate(model, dataset.val, tc.val_sigma, tc.seed, device)
            val_loss = _val_loss(model, dataset.val, tc, use_cls, device)
            if tc.minutes is not None:
                epochs = plan_epochs(tc, epoch, time.perf_counter() - t0, time.perf_counter() - epoch_start)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "lr": lr_at(step - 1, steps_per_epoch * epochs, tc),
                "train_loss": run_loss / max(1, n_batches),
                "val_loss": val_loss,
                **{f"val_{k}": v for k, v in val.items() if k != "sigma"},
                "gates": gate_values(model),
                "epoch_s": round(epoch_time, 3),
            }
            status = f"val {val['psnr_db']:.2f} dB" + (
                f", acc {100 * val['accuracy']:.1f}%" if "accuracy" in val else ""
            )
            bar.update(task, status=status)
            if progress and dist.main and not bar.console.is_terminal:
                # No live bar in a log file or CI: one line per epoch instead.
                bar.console.print(f"epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.5f}, {status}")
            if dist.main:
                improved = val_loss < best
                if improved:
                    best = val_loss
                    save_checkpoint(
                        out_dir,
                        model,
                        training=tc.to_dict(),
                        data=description,
                        metrics={"epoch": epoch + 1, "val": val, "val_loss": val_loss},
                    )
                _append_log(out_dir / LOG, {**record, "best": improved})
                _save_last(last_dir, model, opt, mc, tc, epoch, epochs, step, best, time.perf_counter() - t0)
            dist.barrier()
            summary = record
            epoch += 1

    total_s = time.perf_counter() - t0
    if dist.main:
        best_model, meta = load_checkpoint(out_dir, device=device)
        test_sigma = tc.val_sigma
        test = evaluate(best_model, dataset.test, test_sigma, tc.seed + 1, device)
        meta_metrics = meta.get("metrics", {})
        meta_metrics["test"] = test
        meta_metrics["train_time_s"] = round(total_s, 2)
        meta_metrics["parameters"] = parameter_count(best_model)
        meta_metrics["gates"] = gate_values(best_model)
        sections = {k: v for k, v in meta.items() if k in ("training", "data")}
        save_checkpoint(out_dir, best_model, **sections, metrics=meta_metrics)
        summary = {"test": test, "train_time_s": total_s, "epochs": epochs, "last": summary}
    return summary


@torch.no_grad()
def _val_loss(model: nn.Module, val: EvalSet, tc: TrainConfig, use_cls: bool, device: torch.device) -> float:
    model.eval()
    noisy = torch.from_numpy(val.noisy(tc.val_sigma, tc.seed)).to(device)
    clean = torch.from_numpy(val.clean).to(device)
    total, n = 0.0, 0
    for i in range(0, len(noisy), 128):
        d, lg = model(noisy[i : i + 128])
        loss = F.mse_loss(d, clean[i : i + 128], reduction="sum") / d[0].numel()
        if use_cls and val.labels is not None:
            lab = torch.from_numpy(val.labels[i : i + 128]).to(device)
            loss = loss + tc.cls_weight * F.cross_entropy(lg, lab, reduction="sum")
        total += float(loss)
        n += d.shape[0]
    model.train()
    return total / max(1, n)


def _append_log(path: Path, record: dict[str, Any]) -> None:
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


def _trim_log(path: Path, epochs_done: int) -> None:
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


def saved_state_dir(out_dir: str | Path) -> Path | None:
    """The folder holding the training state `train(..., resume=True)` continues from, or None if none.

    Only the pointer is read here; `_load_last` verifies the state's hashes.
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


def _save_last(
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
    opt_tensors, opt_info = _optimizer_tensors(opt)
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


def _load_last(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, mc: ModelConfig) -> dict[str, Any]:
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
