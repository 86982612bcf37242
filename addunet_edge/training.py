"""The multi-task training loop: MSE + lambda * CE, AdamW, warm-up + cosine, checkpoints, exact resume, DDP."""

from __future__ import annotations

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

from .artifacts import output_lock
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Dataset, EvalSet
from .errors import ConfigError
from .evaluation import evaluate
from .model import ModelConfig, build_model, gate_values, parameter_count
from .training_state import LAST, LOG, append_log, forget_state, load_last, save_last, trim_log


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


@dataclass
class _Run:
    """The fixed parts of one training run, shared by the stages of the loop."""

    mc: ModelConfig
    tc: TrainConfig
    dataset: Dataset
    out_dir: Path
    device: torch.device
    dist: _Dist
    model: nn.Module
    opt: torch.optim.Optimizer
    use_cls: bool
    steps_per_epoch: int
    description: dict[str, Any]


@dataclass
class _Position:
    """Where a run stands: the next epoch, the planned epoch count, optimizer steps taken, best val loss."""

    epoch: int
    epochs: int
    step: int = 0
    best: float = math.inf
    elapsed_s: float = 0.0  # training time spent before this process started (a resumed run)


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
    torch.manual_seed(tc.seed)
    model = build_model(mc).to(device)
    run = _Run(
        mc,
        tc,
        dataset,
        out_dir,
        device,
        dist,
        model,
        opt=torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr),
        use_cls=mc.num_classes > 0 and tc.cls_weight > 0 and dataset.num_classes > 0,
        steps_per_epoch=math.ceil(len(dataset.train) / (tc.batch_size * dist.world)),
        description={
            "dataset": dataset.name,
            **dataset.description,
            "in_channels": dataset.in_channels,
            "num_classes": dataset.num_classes,
        },
    )
    pos = _start(run, resume)
    ddp_model = nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    t0 = time.perf_counter() - pos.elapsed_s
    summary: dict[str, Any] = {}
    with _progress_bar(progress and dist.main) as bar:
        task = bar.add_task("train", total=None, epoch=pos.epoch + 1, status="")
        while pos.epoch < pos.epochs:
            epoch_start = time.perf_counter()
            clean, noisy, labels = _epoch_data(run, pos.epoch)
            train_loss = _train_epoch(run, ddp_model, pos, (clean, noisy, labels), bar, task)
            epoch_time = time.perf_counter() - epoch_start
            summary = _end_epoch(run, pos, train_loss, (t0, epoch_start, epoch_time), bar, task, progress)
            pos.epoch += 1

    total_s = time.perf_counter() - t0
    if dist.main:
        summary = _finish(run, pos.epochs, total_s, summary)
    return summary


def _progress_bar(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, disable=not enabled, transient=False)


def _start(run: _Run, resume: bool) -> _Position:
    """The position to start from: the saved state of last/ (loaded into the model and optimizer), or epoch 0."""
    if not resume:
        if run.dist.main:
            # A fresh run starts a fresh log and forgets the old run's state.
            forget_state(run.out_dir)
        return _Position(epoch=0, epochs=run.tc.epochs)
    state = load_last(run.out_dir / LAST, run.model, run.opt, run.mc)
    pos = _Position(
        epoch=state["epoch"] + 1,
        epochs=state["epochs"],
        step=state["step"],
        best=state["best_val_loss"],
        elapsed_s=state.get("elapsed_s", 0.0),
    )
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
    if run.dist.main:
        trim_log(run.out_dir / LOG, pos.epoch)
    return pos


def _epoch_data(run: _Run, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(clean, noisy, labels) of this rank for `epoch`: order and noise from a generator seeded by (seed, epoch)."""
    tc, dist = run.tc, run.dist
    rng = np.random.default_rng([tc.seed, epoch])
    clean, labels = run.dataset.train.epoch(rng)
    sig = _sigmas(len(clean), tc.sigma, rng)
    noise = rng.standard_normal(clean.shape, dtype=np.float32)
    noisy = clean + noise * (sig / np.float32(255.0))[:, None, None, None]
    # Each rank takes its own contiguous share of the same shuffled epoch.
    share = slice(dist.rank, None, dist.world)
    return clean[share], noisy[share], labels[share] if labels is not None else None


def _train_epoch(
    run: _Run,
    ddp_model: nn.Module,
    pos: _Position,
    data: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    bar: Any,
    task: Any,
) -> float:
    """One pass over the epoch's batches (advancing `pos.step`); returns the mean training loss."""
    tc, device, opt = run.tc, run.device, run.opt
    clean, noisy, labels = data
    run.model.train()
    total_steps = run.steps_per_epoch * pos.epochs
    bar.update(task, total=total_steps, completed=pos.step, epoch=f"{pos.epoch + 1}/{pos.epochs}")
    run_loss, n_batches = 0.0, 0
    for i in range(0, len(clean), tc.batch_size):
        x = torch.from_numpy(np.ascontiguousarray(noisy[i : i + tc.batch_size])).to(device)
        y = torch.from_numpy(np.ascontiguousarray(clean[i : i + tc.batch_size])).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(pos.step, total_steps, tc)
        denoised, logits = ddp_model(x)
        loss = F.mse_loss(denoised, y)
        if run.use_cls and labels is not None:
            lab = torch.from_numpy(labels[i : i + tc.batch_size]).to(device)
            loss = loss + tc.cls_weight * F.cross_entropy(logits, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
        opt.step()
        pos.step += 1
        run_loss += float(loss.detach())
        n_batches += 1
        bar.update(task, completed=pos.step, status=f"loss {run_loss / n_batches:.5f}")
    return run_loss / max(1, n_batches)


def _end_epoch(
    run: _Run,
    pos: _Position,
    train_loss: float,
    times: tuple[float, float, float],
    bar: Any,
    task: Any,
    progress: bool,
) -> dict[str, Any]:
    """Validate, re-plan a --minutes budget, report, and (on the main rank) save; returns the epoch's record.

    `times` is (the run's start, this epoch's start, its training time) on time.perf_counter's clock.
    """
    tc, model, epoch = run.tc, run.model, pos.epoch
    t0, epoch_start, epoch_time = times
    val = evaluate(model, run.dataset.val, tc.val_sigma, tc.seed, run.device)
    val_loss = _val_loss(model, run.dataset.val, tc, run.use_cls, run.device)
    if tc.minutes is not None:
        pos.epochs = plan_epochs(tc, epoch, time.perf_counter() - t0, time.perf_counter() - epoch_start)
    record = {
        "epoch": epoch + 1,
        "step": pos.step,
        "lr": lr_at(pos.step - 1, run.steps_per_epoch * pos.epochs, tc),
        "train_loss": train_loss,
        "val_loss": val_loss,
        **{f"val_{k}": v for k, v in val.items() if k != "sigma"},
        "gates": gate_values(model),
        "epoch_s": round(epoch_time, 3),
    }
    status = f"val {val['psnr_db']:.2f} dB" + (f", acc {100 * val['accuracy']:.1f}%" if "accuracy" in val else "")
    bar.update(task, status=status)
    if progress and run.dist.main and not bar.console.is_terminal:
        # No live bar in a log file or CI: one line per epoch instead.
        bar.console.print(f"epoch {epoch + 1}/{pos.epochs}: loss {record['train_loss']:.5f}, {status}")
    if run.dist.main:
        improved = val_loss < pos.best
        if improved:
            pos.best = val_loss
            save_checkpoint(
                run.out_dir,
                model,
                training=tc.to_dict(),
                data=run.description,
                metrics={"epoch": epoch + 1, "val": val, "val_loss": val_loss},
            )
        append_log(run.out_dir / LOG, {**record, "best": improved})
        elapsed_s = time.perf_counter() - t0
        save_last(run.out_dir / LAST, model, run.opt, run.mc, tc, epoch, pos.epochs, pos.step, pos.best, elapsed_s)
    run.dist.barrier()
    return record


def _finish(run: _Run, epochs: int, total_s: float, last: dict[str, Any]) -> dict[str, Any]:
    """Score the best checkpoint on the test split, record it in the checkpoint; returns the run's summary."""
    tc, device = run.tc, run.device
    best_model, meta = load_checkpoint(run.out_dir, device=device)
    test = evaluate(best_model, run.dataset.test, tc.val_sigma, tc.seed + 1, device)
    meta_metrics = meta.get("metrics", {})
    meta_metrics["test"] = test
    meta_metrics["train_time_s"] = round(total_s, 2)
    meta_metrics["parameters"] = parameter_count(best_model)
    meta_metrics["gates"] = gate_values(best_model)
    sections = {k: v for k, v in meta.items() if k in ("training", "data")}
    save_checkpoint(run.out_dir, best_model, **sections, metrics=meta_metrics)
    return {"test": test, "train_time_s": total_s, "epochs": epochs, "last": last}


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
