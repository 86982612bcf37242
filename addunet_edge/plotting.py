"""What every report shares: a headless pyplot, atomic PNG saving, and unique row labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifacts import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: files only, never a window (also on a headless edge box)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG atomically and close it, whatever happens."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def unique_label(label: str, taken: set[str]) -> str:
    """`label`, or `label #2`, `#3`, ... when already taken; records the one returned."""
    out, k = label, 2
    while out in taken:
        out, k = f"{label} #{k}", k + 1
    taken.add(out)
    return out
