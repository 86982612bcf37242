"""Jetson power and clocks from tegrastats: a parser and a background sampler."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass

_TEGRASTATS_INTERVAL_MS = 100


# --------------------------------------------------------------------------------------------------------
# tegrastats (Jetson): a pure parser, unit-tested on the Orin and Xavier formats, and a background sampler
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TegraSample:
    """The power and clock figures of one tegrastats line."""

    rails_mw: dict[str, int]
    # Board input power: VDD_IN (Orin, Xavier NX, TX2) or POM_5V_IN (Nano); else the sum of all rails.
    input_mw: int | None
    input_rail: str | None
    gpu_load_pct: int | None = None
    gpu_freq_mhz: int | None = None
    emc_freq_mhz: int | None = None
    cpu_freq_mhz: tuple[int, ...] = ()


# A rail is an upper-case name then current/average, in mW with or without the unit (JetPack 4 prints none).
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = frozenset({"RAM", "SWAP", "IRAM", "LFB"})
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_GR3D = re.compile(r"\bGR3D(?:_FREQ)?\s+(\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC(?:_FREQ)?\s+\d+%@(\d+)")
_CPU = re.compile(r"\bCPU\s+\[([^\]]*)\]", re.IGNORECASE)


def parse_tegrastats(line: str) -> TegraSample | None:
    """Power rails (mW) and clocks (MHz) of one tegrastats line; None for a line without any power rail."""
    rails = {name: int(now) for name, now, _avg in _RAIL.findall(line) if name not in _NOT_RAILS}
    if not rails:
        return None
    input_rail = next((r for r in _INPUT_RAILS if r in rails), None)
    input_mw = rails[input_rail] if input_rail else sum(rails.values())
    gpu_load = gpu_freq = emc = None
    if m := _GR3D.search(line):
        gpu_load = int(m.group(1))
        if m.group(2):
            # Orin prints one frequency per GPC ([305,305]); they run in lockstep, report the highest.
            gpu_freq = max(int(v) for v in m.group(2).split(",") if v)
    if m := _EMC.search(line):
        emc = int(m.group(1))
    cpu: tuple[int, ...] = ()
    if m := _CPU.search(line):
        cpu = tuple(int(f) for f in re.findall(r"@(\d+)", m.group(1)))
        # JetPack 3 form: CPU [12%,3%,off,off]@1734, one frequency for the cluster.
        if not cpu and (tail := re.match(r"@(\d+)", line[m.end() :])):
            cpu = (int(tail.group(1)),)
    return TegraSample(
        rails_mw=rails,
        input_mw=input_mw,
        input_rail=input_rail or "sum of rails",
        gpu_load_pct=gpu_load,
        gpu_freq_mhz=gpu_freq,
        emc_freq_mhz=emc,
        cpu_freq_mhz=cpu,
    )


class TegrastatsSampler:
    """Runs `tegrastats --interval 100` in the background and keeps (monotonic time, sample) pairs."""

    def __init__(self, executable: str, interval_ms: int = _TEGRASTATS_INTERVAL_MS) -> None:
        self.executable, self.interval_ms = executable, interval_ms
        self.samples: list[tuple[float, TegraSample]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> TegrastatsSampler:
        self._proc = subprocess.Popen(
            [self.executable, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            sample = parse_tegrastats(line)
            if sample is not None:
                with self._lock:
                    self.samples.append((time.monotonic(), sample))

    def between(self, start: float, end: float) -> list[TegraSample]:
        with self._lock:
            return [s for t, s in self.samples if start <= t <= end]

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2)
