"""The interruption soak's harness (tests/integration/test_faults.py): one fresh CLI process per interruption.

Each interruption starts `python -m addunet_edge <verb> ...` with that verb's real arguments, waits a random
delay, sends SIGKILL or SIGINT (a terminal's Ctrl-C) to the process group, and waits for the process to exit.
Then only two things are read: its exit status and the files it left in its output folder. Nothing is
exchanged with a running command (no pipe, no protocol, no worker that outlives one command), so there is
nothing to get out of step: a process exits, or, if it has not exited `HUNG_S` seconds after the signal, its
stacks are dumped (SIGABRT with faulthandler on) and it is killed and counted as hung.

The process is reaped only after its whole process group has been sent SIGKILL (`os.waitid` with WNOWAIT
sees the exit without reaping), so a signal can never reach a recycled pid and nothing it started survives.

Run as a script (`python faults_harness.py record-train HASHES ARGS...`) this file runs `addunet-edge ARGS`
once, uninterrupted, and appends "best|last <epoch> <sha256>" to HASHES for every best checkpoint and every
resume state the training loop writes: the reference every interrupted training run is compared with.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERBS = ("train", "export", "calibrate", "build", "validate", "run")
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
    "COLUMNS": "120",
    "PYTHONFAULTHANDLER": "1",  # SIGABRT to a hung command prints every thread's stack into its log
}
HUNG_S = 120.0  # the commands take seconds; one still running this long after its signal is hung
RUN_LIMIT_S = 600.0  # the same for an uninterrupted command (the reference runs, the final ones)
TRAIN_EPOCHS = 3

# What an exit status means here (the README: "130 interrupted").
EXIT_MEANING = {
    -signal.SIGKILL: "killed by SIGKILL",
    130: "Ctrl-C caught by the command, which exited 130 ('interrupted: completed outputs were kept')",
    -signal.SIGINT: "Ctrl-C outside the command (interpreter start-up, imports, exit): the process died of "
    "SIGINT, which a shell reports as 130",
    1: "Ctrl-C caught by click around the command ('Aborted!'), or by CPython before its start-up was done "
    "('Fatal Python error: init_import_site')",
    0: "completed: the signal came after the work, or CPython swallowed the KeyboardInterrupt in a callback",
}


# == the commands ========================================================================================


def train_args(shared: Path, run: Path, resume: bool) -> list[str]:
    args = ["train", "--dataset", str(shared / "digits.npz"), "--out", str(run), "--image-size", "16"]
    args += ["--width", "4", "--depth", "1", "--epochs", str(TRAIN_EPOCHS), "--batch-size", "16", "--seed", "0"]
    return [*args, "--resume"] if resume else args


def verb_args(verb: str, shared: Path, folder: Path) -> list[str]:
    """The real command line of one writing verb, writing into `folder` (train: see `train_args`)."""
    data, fp32, ckpt = str(shared / "digits.npz"), str(shared / "model.fp32.onnx"), str(shared / "ckpt")
    if verb == "export":
        return ["export", ckpt, "--out", str(folder / "model.fp32.onnx")]
    if verb == "calibrate":
        args = ["calibrate", fp32, "--out", str(folder / "model.int8.onnx"), "--dataset", data]
        return [*args, "--calibration-images", "16", "--method", "minmax", "--target", "cpu"]
    if verb == "build":
        args = ["build", fp32, "--out", str(folder), "--precision", "fp16", "--backend", "onnxruntime"]
        return [*args, "--dataset", data, "--calibration-images", "16"]
    if verb == "validate":
        args = ["validate", ckpt, fp32, "--dataset", data, "--sigma", "25", "--limit", "8"]
        return [*args, "--report", str(folder / "report"), "--json", str(folder / "validation.json")]
    if verb == "run":
        return ["run", fp32, str(shared / "images"), "--out", str(folder / "out")]
    raise ValueError(verb)


def make_shared(root: Path) -> Path:
    """What every command reads: 60 digits, a tiny trained checkpoint, its fp32 ONNX and three images."""
    from PIL import Image

    from addunet_edge.data import load_dataset, load_digits_images
    from addunet_edge.export import export_onnx
    from addunet_edge.model import ModelConfig
    from addunet_edge.training import TrainConfig, train

    images, labels = load_digits_images(size=16)
    np.savez(root / "digits.npz", images=(images[:60, 0] * 255).astype(np.uint8), labels=labels[:60])
    ds = load_dataset(root / "digits.npz", size=16)
    cfg = TrainConfig(epochs=1, batch_size=16)
    train(ModelConfig(width=4, depth=1, num_classes=10), cfg, ds, root / "ckpt", progress=False)
    export_onnx(root / "ckpt", root / "model.fp32.onnx")
    (root / "images").mkdir()
    for i in range(3):
        Image.fromarray((ds.test.clean[i, 0] * 255).astype(np.uint8)).save(root / "images" / f"d{i}.png")
    return root


# == one process =========================================================================================

_LIVE: set[int] = set()  # process groups of commands still running, for `kill_all`
_LIVE_LOCK = threading.Lock()


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid stays ours until `Popen.wait`)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_all() -> None:
    """SIGKILL every command still running (the test's last resort, from its `finally`)."""
    with _LIVE_LOCK:
        for pgid in list(_LIVE):
            _signal_group(pgid, signal.SIGKILL)


@dataclass
class Exit:
    """How one command process ended."""

    returncode: int
    elapsed_s: float
    sent: str | None  # "kill" / "sigint": the signal reached the process while it ran; None: not sent
    cpu_s: float  # user + system CPU time it used
    hung: bool = False  # still running HUNG_S after the signal: stacks dumped, then killed
    writes: tuple[float, float] | None = None  # (first, last) time a new path appeared (`watch` only)


def _paths(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.name != ".addunet-edge.lock"}


def _ctrl_c_as_in_a_terminal() -> None:
    """Give the command the SIGINT disposition a terminal gives it.

    A shell that starts the test suite in the background (`.ci/run &`, nohup, many CI runners) sets SIGINT to
    "ignore", and an ignored signal stays ignored across fork and exec: Python then installs no
    KeyboardInterrupt handler, the command never sees the Ctrl-C, runs to its end and the soak reads a
    completed run as a hung or wrongly-ended one. With SIG_DFL restored, Python installs its handler as it
    would under a terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_command(
    args: list[str],
    log: Path,
    *,
    cwd: Path,
    sig: int | None = None,
    delay_s: float = 0.0,
    after_write: bool = False,
    watch: Path | None = None,
    script: list[str] | None = None,
) -> Exit:
    """Run `python -m addunet_edge ARGS` in a fresh process; with `sig`, send it `delay_s` after the start.

    With `after_write`, the delay counts from the moment the command's first new file (a temporary, as every
    artifact is written through one) appears in `watch` instead: the signal lands in its writes, however fast
    or slow the machine is today. `watch` is polled every 10 ms; the times the first and the last new path
    appeared are returned. stdout and stderr go to `log`. `script` replaces `-m addunet_edge`.
    """
    cmd = [sys.executable, *(script or ["-m", "addunet_edge"]), *args]
    seen = _paths(watch) if watch is not None else set()
    first = last = None
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **CHILD_ENV},
            cwd=cwd,
            start_new_session=True,  # its own process group: the signal reaches it and nothing else
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )
        with _LIVE_LOCK:
            _LIVE.add(proc.pid)
        sent: str | None = None
        hung = False
        try:
            signal_at = None if sig is None or after_write else t0 + delay_s
            deadline = t0 + RUN_LIMIT_S
            while not _exited(proc.pid):
                now = time.perf_counter()
                if watch is not None and (new := _paths(watch) - seen):
                    first = now - t0 if first is None else first
                    last, seen = now - t0, seen | new
                    if sig is not None and signal_at is None:
                        signal_at = now + delay_s
                if signal_at is not None and sent is None and now >= signal_at:
                    _signal_group(proc.pid, sig)  # type: ignore[arg-type]
                    sent = "kill" if sig == signal.SIGKILL else "sigint"
                    deadline = now + HUNG_S
                if now > deadline:
                    hung = True
                    _signal_group(proc.pid, signal.SIGABRT)  # faulthandler writes the stacks to the log
                    give_up = time.perf_counter() + 5.0
                    while not _exited(proc.pid) and time.perf_counter() < give_up:
                        time.sleep(0.05)
                    break
                pause = 0.01 if watch is not None else 0.02
                if signal_at is not None and sent is None:
                    pause = min(pause, max(0.0, signal_at - now))
                time.sleep(pause)
            elapsed = time.perf_counter() - t0
        finally:
            _signal_group(proc.pid, signal.SIGKILL)  # anything left of it; the pid is not reaped before this
            _, status, usage = os.wait4(proc.pid, 0)  # reaps it, with the CPU time it used
            proc.returncode = os.waitstatus_to_exitcode(status)
            with _LIVE_LOCK:
                _LIVE.discard(proc.pid)
    writes = (first, last) if first is not None and last is not None else None
    return Exit(proc.returncode, elapsed, sent, usage.ru_utime + usage.ru_stime, hung, writes)


def _record_train_main(hash_log: Path, args: list[str]) -> None:
    import addunet_edge.training as training
    from addunet_edge.artifacts import read_json
    from addunet_edge.cli import main
    from addunet_edge.training_state import saved_state_dir

    real_save, real_last = training.save_checkpoint, training.save_last

    def note(kind: str, epoch: int, weights: Path) -> None:
        with open(hash_log, "a") as f:
            f.write(f"{kind} {epoch} {_sha(weights)}\n")

    def save(out: Any, *a: Any, **kw: Any) -> Any:
        result = real_save(out, *a, **kw)
        note("best", read_json(Path(out) / "config.json")["metrics"]["epoch"], Path(out) / "model.safetensors")
        return result

    def last(path: Any, *a: Any, **kw: Any) -> None:
        real_last(path, *a, **kw)
        state_dir = saved_state_dir(Path(path).parent)
        assert state_dir is not None
        note("last", read_json(state_dir / "state.json")["epoch"], state_dir / "model.safetensors")

    training.save_checkpoint, training.save_last = save, last
    sys.argv = ["addunet-edge", *args]
    main()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# == what is right ========================================================================================


class Reference:
    """Known-good outputs, from uninterrupted runs, to compare what survives interruptions with."""

    def __init__(self, ref_root: Path, train_hashes: Path, final: str) -> None:
        self.root = ref_root
        self.x = np.random.default_rng(1).random((2, 1, 16, 16), dtype=np.float32)
        self._outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        rows = [line.split() for line in train_hashes.read_text().splitlines()]
        # (epoch, sha256) of every best checkpoint and every resume state the uninterrupted run wrote
        self.best = {(int(e), h) for kind, e, h in rows if kind == "best"}
        self.last = {(int(e), h) for kind, e, h in rows if kind == "last"}
        self.final = final

    def outputs(self, rel: str) -> tuple[np.ndarray, np.ndarray] | None:
        if rel not in self._outputs:
            path = self.root / rel
            if not path.exists():
                return None
            self._outputs[rel] = run_onnx(path, self.x)
        return self._outputs[rel]


def run_onnx(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from addunet_edge.engines import open_engine

    with open_engine(path, threads=1) as engine:
        p = engine(x)
    return p.denoised, p.logits


def _stamp(*paths: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """Inode, mtime and size of each path: every artifact is replaced by a rename, so a file with the same
    stamp as at its last check is the file that was checked."""
    stamps = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            stamps.append(None)
            continue
        stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def verify(
    verb: str, folder: Path, ref: Reference, lock: threading.Lock, checked: dict[str, Any] | None = None
) -> Counter[str]:
    """'ok' / 'refused' / 'wrong' for every artifact in `folder` (wrong: it loads but differs from the reference).

    A checkpoint or a resume state is right when (its epoch, its weights hash) is a pair the uninterrupted
    training run wrote; an ONNX when its outputs equal the reference copy's; an image when its pixels do.
    `checked` (kept by the caller between calls) skips files that were not replaced since their last check:
    they count as 'unchanged', not again as 'ok' or 'refused'.
    """
    import torch

    from addunet_edge.artifacts import read_json, read_manifest
    from addunet_edge.checkpoint import load_checkpoint
    from addunet_edge.errors import AddUNetEdgeError
    from addunet_edge.media import read_image
    from addunet_edge.model import ModelConfig, build_model
    from addunet_edge.training import param_groups
    from addunet_edge.training_state import load_last, saved_state_dir

    outcomes: Counter[str] = Counter()
    runs = sorted(folder.glob("run-*"), key=lambda p: int(p.name.split("-")[1]))
    # Of the training runs only the newest is still being written; the older ones were checked before.
    paths = [runs[-1], *sorted(runs[-1].rglob("*"))] if runs else sorted(folder.rglob("*"))
    for path in paths:
        rel = str(path.relative_to(folder))
        if path.name.startswith(".") or ("/." in f"/{rel}" and ".calibration-cache" not in rel):
            continue  # temporaries left by kill -9 (never read by anything), the lock and the test's notes
        stamp = None if path.is_dir() else _stamp(path, path.with_name(path.name + ".manifest.json"))
        if checked is not None and stamp is not None:
            if checked.get(rel) == stamp:
                outcomes["unchanged"] += 1
                continue
            checked[rel] = stamp
        try:
            if path.suffix == ".onnx":
                read_manifest(path)  # refuses a hash mismatch
                with lock:
                    got, want = run_onnx(path, ref.x), ref.outputs(f"{verb}/{rel}")
                right = want is not None and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
            elif path.is_dir() and (path / "config.json").exists():
                _, meta = load_checkpoint(path)
                right = (meta["metrics"]["epoch"], _sha(path / "model.safetensors")) in ref.best
            elif path.is_dir() and path.name == "last" and (state_dir := saved_state_dir(path.parent)) is not None:
                mc = ModelConfig.from_dict(read_json(state_dir / "state.json")["model"])
                model = build_model(mc)
                state = load_last(path, model, torch.optim.AdamW(param_groups(model, 1e-4)), mc)
                right = (state["epoch"], _sha(state_dir / "model.safetensors")) in ref.last
            elif path.suffix in (".png", ".tif") and "report" not in rel:
                got_img, want_path = read_image(path), ref.root / verb / rel
                right = want_path.exists() and np.array_equal(got_img, read_image(want_path))
            elif path.suffix == ".json" and not path.name.endswith(".manifest.json") and "last" not in Path(rel).parts:
                obj = read_json(path, what="output")
                right = isinstance(obj, dict) and bool(obj)
                if ".calibration-cache" in rel:
                    right = obj["ranges"] == read_json(ref.root / verb / rel)["ranges"]
            else:
                continue
        except AddUNetEdgeError as e:
            outcomes["refused"] += 1
            gist = re.sub(r"/\S+", "<path>", str(e))[:90]
            outcomes[f"refused {type(e).__name__}: {gist}"] += 1
            continue
        outcomes["ok" if right else "wrong"] += 1
        if not right:
            outcomes[f"wrong:{verb}/{rel}"] += 1
    return outcomes


def ending(done: Exit, ref_code: int, log: Path) -> str:
    """'completed', 'interrupted' or what else a command's exit status says (see EXIT_MEANING)."""
    code = done.returncode
    if done.hung:
        return f"still running {HUNG_S:.0f} s after the signal: stacks in the log"
    if code == ref_code:
        return "completed"
    if done.sent == "kill" and code == -signal.SIGKILL:
        return "interrupted"
    if done.sent == "sigint" and code in (130, -signal.SIGINT):
        return "interrupted"
    last_word = log.read_text(errors="replace").split()[-1:]
    if done.sent == "sigint" and code == 1 and last_word in (["Aborted!"], ["KeyboardInterrupt"]):
        return "interrupted"  # by click around the command, or by CPython in its start-up
    return "an error"


# == the soak =============================================================================================


@dataclass
class Timing:
    """One uninterrupted run of a command, watched: how long it took and when it wrote."""

    total_s: float
    first_write_s: float
    last_write_s: float


@dataclass
class VerbLane:
    """One verb's folder and tally; its commands run one after another (one folder, one writer)."""

    verb: str
    quota: int  # interruptions to land (a signal that reached a running command and stopped it)
    folder: Path
    rng: random.Random
    timing: Timing | None = None  # the reference run's
    expected_s: float = 0.0  # how long a run takes now: from the reference, then from every run that completes
    ref_code: int = 0
    attempts: int = 0
    busy: bool = False
    done: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    # CPU seconds its commands used: in the reference run, the interruptions and the final run
    cpu: Counter[str] = field(default_factory=Counter)
    finals: list[str] = field(default_factory=list)  # train: weights hash of every completed run
    checked: dict[str, Any] = field(default_factory=dict)  # `verify`'s memory of the files it checked

    @property
    def landed(self) -> int:
        return self.counts["interruptions"]

    def remaining_s(self) -> float:
        return max(0, self.quota - self.landed) * (self.timing.total_s if self.timing else 1.0)

    def draw(self) -> tuple[bool, float]:
        """When to interrupt: (after its first write?, delay). Half the time at any instant from the start
        (interpreter start-up and imports included) to just past the expected end; half the time in its writes:
        after the first temporary file appears, within the stretch the reference run wrote in (at today's pace)."""
        assert self.timing is not None
        if self.rng.random() < 0.5:
            return False, self.rng.uniform(0.0, 1.05 * self.expected_s)
        pace = self.expected_s / self.timing.total_s
        return True, self.rng.uniform(0.0, pace * max(0.05, self.timing.last_write_s - self.timing.first_write_s))

    def ran(self, elapsed_s: float) -> None:
        """A run completed in `elapsed_s`: the machine's pace now (CI's load changes)."""
        self.expected_s = 0.7 * self.expected_s + 0.3 * elapsed_s


class Soak:
    """Interrupt every writing verb `quotas[verb]` times, two commands at a time, and check every folder after."""

    def __init__(
        self, shared: Path, root: Path, quotas: dict[str, int], *, seed: int, kill_fraction: float = 0.5
    ) -> None:
        self.shared, self.root, self.kill_fraction = shared, root, kill_fraction
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        base = random.Random(seed)
        self.lanes = {v: VerbLane(v, quotas[v], root / "work" / v, random.Random(base.randrange(2**32))) for v in VERBS}
        self.failures: list[str] = []
        self.ort_lock, self.lock = threading.Lock(), threading.Lock()
        self.ref: Reference | None = None
        self._n = 0
        self._t0, self._cpu0 = time.perf_counter(), _own_cpu_s()

    # -- plumbing --

    def _log(self, verb: str) -> Path:
        with self.lock:
            self._n += 1
            return self.logs / f"{self._n:04d}-{verb}.log"

    def _fail(self, what: str, log: Path | None = None) -> None:
        tail = "\n" + log.read_text(errors="replace")[-2500:] if log is not None else ""
        with self.lock:
            self.failures.append(f"{what}{tail}")

    def _train_run(self, lane: VerbLane) -> tuple[Path, bool]:
        """The training run folder the next `train` writes into, and whether it resumes it."""
        from addunet_edge.training_state import saved_state_dir

        runs = sorted(lane.folder.glob("run-*"), key=lambda p: int(p.name.split("-")[1]))
        if runs and not (runs[-1] / ".COMPLETE").exists():
            return runs[-1], saved_state_dir(runs[-1]) is not None
        return lane.folder / f"run-{len(runs)}", False

    def _args(self, lane: VerbLane) -> tuple[list[str], str]:
        if lane.verb != "train":
            return verb_args(lane.verb, self.shared, lane.folder), ""
        run, resume = self._train_run(lane)
        return train_args(self.shared, run, resume), ("resume" if resume else "fresh")

    def _completed(self, lane: VerbLane, args: list[str], how: str, log: Path) -> None:
        """Bookkeeping for a command that ran to its end (exit status as an uninterrupted run's)."""
        if lane.verb == "train":
            run = Path(args[args.index("--out") + 1])
            lane.finals.append(_sha(run / "model.safetensors"))
            (run / ".COMPLETE").touch()
            lane.counts[f"training runs completed ({how})"] += 1

    # -- phases --

    def setup(self) -> None:
        """Per verb, in two lanes: the uninterrupted reference run, watched (how long it runs, when it writes)."""

        def prepare(lane: VerbLane) -> None:
            ref = self.root / "ref" / lane.verb
            ref.mkdir(parents=True)
            log = self._log(f"reference-{lane.verb}")
            if lane.verb == "train":
                args = [str(self.root / "ref" / "train.hashes"), *train_args(self.shared, ref, False)]
                done = run_command(args, log, cwd=self.root, watch=ref, script=[__file__, "record-train"])
            else:
                done = run_command(verb_args(lane.verb, self.shared, ref), log, cwd=self.root, watch=ref)
            lane.cpu["reference"] += done.cpu_s
            if done.returncode not in (0, 3) or done.writes is None:  # 3: validate's drift budget broken
                self._fail(f"reference {lane.verb}: exit {done.returncode}, writes {done.writes}", log)
                return
            lane.ref_code = done.returncode
            lane.timing = Timing(done.elapsed_s, *done.writes)
            lane.expected_s = done.elapsed_s
            lane.folder.mkdir(parents=True)

        self._two_lanes(prepare, lambda lane: lane.timing is None and not lane.busy and not lane.done, once=True)
        if not self.failures:
            final = _sha(self.root / "ref" / "train" / "model.safetensors")
            self.ref = Reference(self.root / "ref", self.root / "ref" / "train.hashes", final)

    def interrupt_once(self, lane: VerbLane) -> None:
        assert lane.timing is not None and self.ref is not None
        lane.attempts += 1
        sig = signal.SIGKILL if lane.rng.random() < self.kill_fraction else signal.SIGINT
        after_write, delay = lane.draw()
        args, how = self._args(lane)
        log = self._log(lane.verb)
        temporaries = set(lane.folder.rglob(".*.tmp"))
        done = run_command(args, log, cwd=self.root, sig=sig, delay_s=delay, after_write=after_write, watch=lane.folder)
        lane.cpu["interruptions"] += done.cpu_s
        c = lane.counts
        c[f"exit {done.returncode} after {done.sent}" if done.sent else "not signalled: it had ended already"] += 1
        outcome = ending(done, lane.ref_code, log)
        if outcome == "completed":
            self._completed(lane, args, how, log)
            lane.ran(done.elapsed_s)
        elif outcome == "interrupted":
            c.update(["interruptions", done.sent or "?", "at a write" if after_write else "at any time"])
            if how:
                c[f"{how} runs interrupted"] += 1
            for left in set(lane.folder.rglob(".*.tmp")) - temporaries if done.returncode == 130 else ():
                # harmless (nothing reads a dot-file) but untidy: which write was it?
                name = re.sub(r"\.[^.]+\.tmp$", ".*.tmp", str(left.relative_to(lane.folder)))
                c[f"temporary left by a Ctrl-C that exited 130: {re.sub(r'run-[0-9]+', 'run-N', name)}"] += 1
        elif lane.verb == "train" and how == "resume" and done.returncode == 2:
            # Refused the state an interruption left: the two slots of last/ say that cannot happen.
            c["resume refused"] += 1
            self._fail("train --resume refused the state an interruption left", log)
            shutil.rmtree(Path(args[args.index("--out") + 1]) / "last", ignore_errors=True)
        else:
            what = "hung" if done.hung else f"exit {done.returncode}"
            self._fail(f"{lane.verb} {how}: {what} after {done.sent or 'no signal'} ({outcome})", log)
        c.update(verify(lane.verb, lane.folder, self.ref, self.ort_lock, lane.checked))

    def finish(self, lane: VerbLane) -> None:
        """One last uninterrupted command: interrupted work always finishes, and finishes right."""
        assert self.ref is not None
        args, how = self._args(lane)
        log = self._log(f"final-{lane.verb}")
        done = run_command(args, log, cwd=self.root)
        lane.cpu["final"] += done.cpu_s
        if done.returncode != lane.ref_code:
            self._fail(f"final {lane.verb} ({how or 'run'}): exit {done.returncode}", log)
        else:
            self._completed(lane, args, f"final {how}".strip(), log)
        lane.counts.update(verify(lane.verb, lane.folder, self.ref, self.ort_lock, lane.checked))

    def step(self, lane: VerbLane) -> None:
        max_attempts = 3 * lane.quota  # signals that came after the command's end do not count; bounded
        if lane.landed < lane.quota and lane.attempts < max_attempts and not self.failures:
            self.interrupt_once(lane)
        else:
            lane.done = True
            if not self.failures:
                self.finish(lane)

    def run(self) -> None:
        self._two_lanes(self.step, lambda lane: lane.timing is not None and not lane.busy and not lane.done)

    def _two_lanes(self, work: Any, ready: Any, *, once: bool = False) -> None:
        """Two threads; each repeatedly takes the ready verb with the most work left and does `work(lane)`."""
        stop = threading.Event()
        cond = threading.Condition(self.lock)

        def pick() -> VerbLane | None:
            with cond:
                while not stop.is_set():
                    free = [lane for lane in self.lanes.values() if ready(lane)]
                    if free:
                        lane = max(free, key=lambda lane: lane.remaining_s())
                        lane.busy = True
                        return lane
                    if not any(lane.busy for lane in self.lanes.values()):
                        return None
                    cond.wait(1.0)
            return None

        def thread() -> None:
            while (lane := pick()) is not None:
                try:
                    work(lane)
                except Exception as e:  # a broken check is a failure of the test, with the lane named
                    self._fail(f"{lane.verb}: {type(e).__name__}: {e}")
                    lane.done = True
                finally:
                    with cond:
                        if once:
                            lane.done = True
                        lane.busy = False
                        cond.notify_all()

        threads = [threading.Thread(target=thread, name=f"lane-{i}") for i in range(2)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            stop.set()
            kill_all()
            for t in threads:
                t.join()
        if once:
            for lane in self.lanes.values():
                lane.done = False

    # -- the tally --

    def summary(self) -> dict[str, Any]:
        total: Counter[str] = Counter()
        for lane in self.lanes.values():
            total.update(lane.counts)
        keys = ("interruptions", "kill", "sigint", "ok", "refused", "wrong", "unchanged")
        commands_cpu = sum(sum(lane.cpu.values()) for lane in self.lanes.values())
        checks_cpu = _own_cpu_s() - self._cpu0  # this process: the checks of every folder (and its threads)
        return {
            "interruptions": {v: lane.landed for v, lane in self.lanes.items()},
            "attempts": {v: lane.attempts for v, lane in self.lanes.items()},
            "totals": {k: total[k] for k in keys},
            "wall_s": round(time.perf_counter() - self._t0, 1),
            # Where the time goes, in CPU seconds (on an idle 2-core machine the wall time is about half the sum).
            "cpu_s": {"commands": round(commands_cpu, 1), "checks": round(checks_cpu, 1)},
            "cpu_s_per_attempt": {
                v: round(lane.cpu["interruptions"] / max(1, lane.attempts), 2) for v, lane in self.lanes.items()
            },
            "cpu_s_per_verb": {v: {k: round(t, 1) for k, t in lane.cpu.items()} for v, lane in self.lanes.items()},
            "timing_s": {
                v: [round(t, 2) for t in (lane.timing.total_s, lane.timing.first_write_s, lane.timing.last_write_s)]
                for v, lane in self.lanes.items()
                if lane.timing is not None
            },
            "per_verb": {v: dict(sorted(lane.counts.items())) for v, lane in self.lanes.items()},
            "exit_meaning": {str(k): v for k, v in EXIT_MEANING.items()},
            "failures": len(self.failures),
        }

    def finals(self) -> list[str]:
        return self.lanes["train"].finals


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def quotas(total: int) -> dict[str, int]:
    """`total` interruptions shared out so that the cheap commands take more of them (CI's budget)."""
    weights = {"train": 36, "export": 12, "calibrate": 26, "build": 24, "validate": 18, "run": 94}
    scale = total / sum(weights.values())
    return {v: max(1, math.ceil(w * scale)) for v, w in weights.items()}


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "record-train":
    _record_train_main(Path(sys.argv[2]), sys.argv[3:])
