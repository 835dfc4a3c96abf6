"""Runs of one cell over several seeds, summarised: mean ± standard deviation, and how often the
target was reached.

A difference between two cells means something only where it exceeds their spread over seeds; the
spread is also given in test images (``std × test_images``), since on a small test set (digits: 360
images) one image is 0.28 points of accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: The columns of ``summary_by_cell.csv``, in order.
AGGREGATE_COLUMNS = [
    "cell",
    "scheme",
    "codec",
    "downlink",
    "cut",
    "mode",
    "error_feedback",
    "seeds",
    "status",
    "completed",
    "final_accuracy_mean",
    "final_accuracy_std",
    "std_in_test_images",
    "reached",
    "mb_to_target_mean",
    "mb_to_target_std",
    "mb_up_to_target_mean",
    "mb_up_to_target_std",
    "mb_down_to_target_mean",
    "mb_down_to_target_std",
    "s_to_target_mean",
    "s_to_target_std",
    "link",
    "s_to_target_link_mean",
    "s_to_target_link_std",
    "mb_up_mean",
    "mb_down_mean",
    "uplink_bits_per_element_mean",
]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``n - 1``): ``None`` for one value (no spread), both ``None`` for none."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell (its runs share ``cell``), in the order cells first appear.

    ``status`` is ``completed``, or each distinct status of its runs (``completed; failed: ...``).
    Accuracy statistics are over the completed runs; MB to the target over the runs that reached it
    (``reached`` says how many of how many: ``"2/3"``).
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r["cell"]), []).append(r)
    out = []
    for label, runs in groups.items():
        first = runs[0]
        done = [r for r in runs if r["status"] == "completed" and r["final_accuracy"] is not None]
        hit = [r for r in done if r["mb_to_target"] is not None]
        acc_mean, acc_std = mean_std([float(r["final_accuracy"]) for r in done])
        images = [r.get("test_images") for r in done]
        row: dict[str, Any] = {k: first[k] for k in ("scheme", "codec", "cut", "mode", "error_feedback")}
        row["downlink"] = first.get("downlink", "none")  # summaries written before the column: dense
        row |= {
            "cell": label,
            "seeds": " ".join(str(r["seed"]) for r in runs),
            "status": "; ".join(dict.fromkeys(str(r["status"]) for r in runs)),
            "completed": len(done),
            "final_accuracy_mean": acc_mean,
            "final_accuracy_std": acc_std,
            "std_in_test_images": (
                round(acc_std * images[0], 1)
                if acc_std is not None and images and images[0] and len(set(images)) == 1
                else None
            ),
            "reached": f"{len(hit)}/{len(runs)}",
        }
        for key in ("mb_to_target", "mb_up_to_target", "mb_down_to_target", "s_to_target", "s_to_target_link"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([float(r[key]) for r in hit if r.get(key) is not None])
        row["link"] = first.get("link", "")
        for key in ("mb_up", "mb_down", "uplink_bits_per_element"):
            row[f"{key}_mean"] = mean_std([float(r[key]) for r in done if r.get(key) is not None])[0]
        out.append(row)
    return out
