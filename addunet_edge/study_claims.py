"""The study's numbers over seeds and its two claims, as pure functions of run records (tested on synthetic numbers).

(a) "shallow skips favour reconstruction, deeper features support classification": with lambda > 0 the
    deep gates are larger relative to the shallow ones than at lambda = 0. Measured by the depth ratio
    mean(deeper half of the gates) / mean(shallower half) (the middle level of an odd depth is left out).
(b) "AddUNet stays competitive with fewer parameters": for every task, AddUNet's mean PSNR is within
    0.3 dB of ConcatUNet's, its accuracy within 1 point, and it has fewer parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

PSNR_TOLERANCE_DB = 0.3
ACCURACY_TOLERANCE = 0.01  # one percentage point


def stats(values: Sequence[float | None]) -> dict[str, Any]:
    """mean, std (sample std over seeds; 0 with one seed) and n of the finite values; None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return {"mean": float(np.mean(xs)), "std": std, "n": len(xs)}


def depth_ratio(gates: Sequence[float]) -> float | None:
    """mean of the deeper half of the gates / mean of the shallower half (middle level of an odd depth
    left out); None for a single level or a zero denominator."""
    g = [float(v) for v in gates]
    half = len(g) // 2
    if half == 0:
        return None
    shallow, deep = float(np.mean(g[:half])), float(np.mean(g[-half:]))
    return deep / shallow if shallow > 0 else None


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group runs by configuration (first-seen order): mean ± std over seeds of every metric and gate."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["config"], []).append(r)
    out = []
    for name, runs in groups.items():
        first = runs[0]
        levels = max((len(r["gates"]) for r in runs), default=0)
        gates = [stats([r["gates"][k] for r in runs if len(r["gates"]) > k]) for k in range(levels)]
        out.append(
            {
                "config": name,
                "arch": first["arch"],
                "task": first["task"],
                "lambda": first["lambda"],
                "seeds": [r["seed"] for r in runs],
                "psnr_db": stats([r["psnr_db"] for r in runs]),
                "ssim": stats([r["ssim"] for r in runs]),
                "accuracy": stats([r["accuracy"] for r in runs]),
                "gates": gates,
                "depth_ratio": stats([depth_ratio(r["gates"]) for r in runs]) if levels else stats([]),
                "parameters": first["parameters"],
                "macs_per_pixel": first["macs_per_pixel"],
                "train_time_s": stats([r.get("train_time_s") for r in runs]),
            }
        )
    return out


def _claim(cid: str, title: str, verdict: str, summary: str, details: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": cid, "title": title, "verdict": verdict, "summary": summary, "details": details}


GATE_CLAIM = "(a) multi-task training moves gate weight to deep skips"
COMPETITIVE_CLAIM = "(b) AddUNet competitive with fewer parameters"


def check_gate_claim(configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Claim (a): for every lambda > 0, AddUNet's mean depth ratio on digits exceeds the lambda = 0 one.

    'reproduced' when every difference is positive and (with several seeds) larger than the seed spread
    (root sum of squares of the two stds); 'not reproduced' when every difference is <= 0, likewise beyond
    the spread; otherwise 'inconclusive'."""
    rows = [c for c in configs if c["arch"] == "addunet" and c["task"] == "digits" and c["depth_ratio"]["n"]]
    base = next((c for c in rows if c["lambda"] == 0), None)
    others = sorted((c for c in rows if c["lambda"] > 0), key=lambda c: c["lambda"])
    if base is None or not others:
        return _claim(
            "a",
            GATE_CLAIM,
            "not testable",
            "needs AddUNet digits runs at lambda = 0 and at some lambda > 0 with at least two levels",
            [],
        )
    details = []
    for c in others:
        delta = c["depth_ratio"]["mean"] - base["depth_ratio"]["mean"]
        several = c["depth_ratio"]["n"] > 1 and base["depth_ratio"]["n"] > 1
        spread = math.hypot(c["depth_ratio"]["std"], base["depth_ratio"]["std"]) if several else None
        details.append(
            {
                "lambda": c["lambda"],
                "depth_ratio": c["depth_ratio"]["mean"],
                "depth_ratio_at_0": base["depth_ratio"]["mean"],
                "difference": delta,
                "seed_spread": spread,
                "beyond_spread": None if spread is None else abs(delta) > spread,
            }
        )
    up = all(d["difference"] > 0 for d in details)
    down = all(d["difference"] <= 0 for d in details)
    # With one seed there is no spread to compare against: the sign alone decides (and the text says so).
    clear = all(d["beyond_spread"] is not False for d in details)
    ratios = ", ".join(f"λ={d['lambda']:g}: {d['depth_ratio']:.3f}" for d in details)
    text = f"deep/shallow gate ratio {base['depth_ratio']['mean']:.3f} at λ=0 vs {ratios}"
    if up and clear:
        verdict = "reproduced"
    elif down and clear:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
        text += "; the differences are mixed in sign or within the seed spread"
    if any(d["seed_spread"] is None for d in details):
        text += " (one seed: no spread estimate)"
    return _claim("a", GATE_CLAIM, verdict, text, details)


def check_competitive_claim(configs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Claim (b): per task, AddUNet PSNR >= ConcatUNet - 0.3 dB, accuracy >= ConcatUNet - 1 point, and
    fewer parameters. 'reproduced' only when every pair passes."""
    by_key = {(c["arch"], c["task"], c["lambda"]): c for c in configs}
    details = []
    for (arch, task, lam), add in by_key.items():
        concat = by_key.get(("concat", task, lam))
        if arch != "addunet" or concat is None:
            continue
        pa, pc = add["psnr_db"]["mean"], concat["psnr_db"]["mean"]
        aa, ac = add["accuracy"]["mean"], concat["accuracy"]["mean"]
        psnr_gap = None if pa is None or pc is None else pa - pc
        acc_gap = None if aa is None or ac is None else aa - ac
        checks = {
            "psnr": psnr_gap is not None and psnr_gap >= -PSNR_TOLERANCE_DB,
            "accuracy": acc_gap is None or acc_gap >= -ACCURACY_TOLERANCE,
            "fewer_parameters": add["parameters"] < concat["parameters"],
        }
        details.append(
            {
                "task": task,
                "lambda": lam,
                "psnr_gap_db": psnr_gap,
                "accuracy_gap": acc_gap,
                "parameters": [add["parameters"], concat["parameters"]],
                "checks": checks,
                "passed": all(checks.values()),
            }
        )
    if not details:
        return _claim("b", COMPETITIVE_CLAIM, "not testable", "needs AddUNet and ConcatUNet runs of one task", [])
    failed = [d for d in details if not d["passed"]]
    parts = []
    for d in details:
        where = "photos" if d["task"] == "photos" else f"digits λ={d['lambda']:g}"
        acc = "" if d["accuracy_gap"] is None else f", accuracy {100 * d['accuracy_gap']:+.1f} pt"
        psnr_text = "n/a" if d["psnr_gap_db"] is None else f"{d['psnr_gap_db']:+.2f} dB"
        parts.append(
            f"{where}: PSNR {psnr_text}{acc}, {d['parameters'][0]:,} vs {d['parameters'][1]:,} parameters"
            f"{'' if d['passed'] else ' [fails: ' + ', '.join(k for k, v in d['checks'].items() if not v) + ']'}"
        )
    verdict = "not reproduced" if failed else "reproduced"
    return _claim("b", COMPETITIVE_CLAIM, verdict, "AddUNet minus ConcatUNet: " + "; ".join(parts), details)
