"""What bench measured: one row per engine and shape, the schedule, and the whole result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA = "addunet-edge/bench"
SCHEMA_VERSION = 1
# Short rounds: every engine sees the same stretch of a drifting machine (thermals, neighbours), while a
# round stays long enough that switching engines costs little next to the timed work.
ROUND_ITERATIONS = 5


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    """One engine at one input shape with one way of timing it."""

    artifact: str
    label: str
    backend: str
    precision: str
    target: str | None
    device: str
    # 'host': numpy in and out on the CPU; 'compute': device-resident input, no copies; 'end_to_end': numpy in
    # and out with the host-device copies included (trtexec's "GPU Compute Time" vs "Latency").
    timing: str
    cuda_graph: bool
    baseline: bool
    batch: int
    height: int
    width: int
    iterations: int
    latency_ms_min: float
    latency_ms_median: float
    latency_ms_mean: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_max: float
    throughput_img_s: float
    throughput_mpix_s: float
    peak_rss_mib: float | None
    rss_delta_mib: float | None
    device_memory_mib: float | None
    macs_per_image: int | None
    gmac_s: float | None
    speedup_vs_torch: float | None = None
    avg_power_mw: float | None = None
    energy_mj_per_image: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ScheduleEntry:
    """One block of timed runs, in the order they ran (warm-up blocks have warmup=True)."""

    label: str
    timing: str
    batch: int
    height: int
    width: int
    iterations: int
    warmup: bool


@dataclass
class BenchResult:
    system: dict[str, Any]
    rows: list[BenchRow]
    schedule: list[ScheduleEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "system": self.system,
            "notes": self.notes,
            "rows": [r.to_dict() for r in self.rows],
            "schedule": [asdict(s) for s in self.schedule],
        }


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(BenchRow))
