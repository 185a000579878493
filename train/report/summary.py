"""Label-efficiency results over seeds: one row per finetuning run, one summary per (mode, label fraction).

Every summary cell carries a central value and *both* of its uncertainties, which answer different
questions:

* the **seed spread** (how much another label subset and initialisation would move the number):
  the standard deviation over seeds, printed ``± x``; for rejections the spread of ln(1/εB),
  printed ``± x %``. With one seed there is no spread and none is printed (never "± 0");
* the **test-set interval** (how much another test set of the same size would move it): the 68 %
  bootstrap interval of each run, averaged over seeds (bound by bound; the seeds share the test jets,
  so their test-set fluctuations are nearly the same), printed ``[low, high]``.

Accuracy and AUC are averaged over seeds arithmetically; rejections geometrically (in log space: a
rejection is a ratio, and one lucky seed reading 3 background jets must not dominate the mean).
The ``<figure>_mean`` keys hold these central values. A rejection where some seed passes no
background jet is a lower bound, shown ``> x``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from jjepa.common.atomic import atomic_path
from jjepa.common.errors import JJepaError

#: The figures summarised; rejections are averaged in log space.
FIGURES: tuple[str, ...] = ("accuracy", "auc", "rej_at_50", "rej_at_30")
REJECTIONS: frozenset[str] = frozenset({"rej_at_50", "rej_at_30"})

#: The columns of a scan table: one row per run.
RUN_COLUMNS: tuple[str, ...] = (
    "mode", "label_fraction", "seed", "n_train_labels",
    *(f"{k}{suffix}" for k in FIGURES for suffix in ("", "_ci_low", "_ci_high")),
    "rej_at_50_lower_bound", "rej_at_30_lower_bound", "n_background_pass_at_50", "n_background_pass_at_30",
    "best_step", "steps_run", "best_at_edge", "val_auc", "val_rej_at_50",
)
_TEXT = frozenset({"mode", "best_at_edge"})
_FLAGS = frozenset({"rej_at_50_lower_bound", "rej_at_30_lower_bound"})


def cell_name(mode: str, fraction: float, seed: int) -> str:
    """The folder of one run of a scan, e.g. ``finetune-f0.01-s0`` (``scan`` writes it, ``evaluate`` reads it)."""
    return f"{mode}-f{fraction:g}-s{seed}"


def run_row(mode: str, label_fraction: float, seed: int, metrics: Mapping) -> dict:
    """One scan-table row from a run's ``metrics.json`` (older runs without intervals give NaN there)."""
    row: dict = {"mode": mode, "label_fraction": label_fraction, "seed": seed,
                 "n_train_labels": metrics.get("n_train_labels")}
    for key in FIGURES:
        row[key] = _number(metrics.get(key))
        low, high = metrics.get(f"{key}_ci") or (math.nan, math.nan)
        row[f"{key}_ci_low"], row[f"{key}_ci_high"] = _number(low), _number(high)
    for key in ("rej_at_50_lower_bound", "rej_at_30_lower_bound"):
        row[key] = bool(metrics.get(key, False))
    for key in ("n_background_pass_at_50", "n_background_pass_at_30", "best_step", "steps_run"):
        row[key] = metrics.get(key)
    row["best_at_edge"] = metrics.get("best_at_edge") or ""
    val = metrics.get("val") or {}
    row["val_auc"], row["val_rej_at_50"] = _number(val.get("auc")), _number(val.get("rej_at_50"))
    return row


def write_rows(path: str | Path, rows: list[dict], columns: tuple[str, ...] = RUN_COLUMNS) -> None:
    """Rows as CSV at ``path`` (atomically); missing values are written empty."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a scan table written by :func:`write_rows`, with numbers, flags and text typed back."""
    with open(path, newline="") as f:
        return [{k: _parse(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def summarise(rows: list[dict]) -> list[dict]:
    """Per (mode, label_fraction): the central value, seed spread and test-set interval of every figure.

    Keys per figure k: ``k_mean`` (arithmetic mean; geometric for rejections), ``k_seed_spread``
    (std over seeds, ddof 1; for rejections the std of the natural log, a relative spread; None with
    one seed), ``k_ci_low``/``k_ci_high`` (seed-averaged 68 % test-set interval, geometric for
    rejections), and for rejections ``k_lower_bound``. Also ``n_seeds``, ``n_train_labels`` and
    ``n_best_at_edge`` (runs whose best validation was their first or last).
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["label_fraction"]), []).append(row)
    summary = []
    for (mode, fraction), group in groups.items():
        counts = [r["n_train_labels"] for r in group]
        if None in counts:
            raise JJepaError(f"{mode} at label fraction {fraction:g}: a run without n_train_labels in its "
                             "metrics.json; rerun that cell (delete its folder and run the scan again)")
        entry = {"mode": mode, "label_fraction": fraction, "n_seeds": len(group),
                 "n_train_labels": int(np.mean(counts)),
                 "n_best_at_edge": sum(bool(r.get("best_at_edge")) for r in group)}
        for key in FIGURES:
            entry.update(_aggregate(key, group))
        summary.append(entry)
    return summary


def summary_markdown(summary: list[dict]) -> str:
    """The summary as a Markdown table, with a legend saying what each number and bracket is."""
    header = ("| mode | label fraction | labelled jets | seeds | accuracy | AUC | 1/εB at εS=0.5 | "
              "1/εB at εS=0.3 | best step at edge |\n")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"]
    for e in summary:
        cells = [format_figure(e, k) for k in FIGURES]
        edge = f"{e['n_best_at_edge']}/{e['n_seeds']}" if e["n_best_at_edge"] else ""
        lines.append(f"| {e['mode']} | {e['label_fraction']:g} | {e['n_train_labels']} | {e['n_seeds']} | "
                     + " | ".join(cells) + f" | {edge} |\n")
    lines.append(LEGEND)
    return "".join(lines)


#: What the numbers of a summary table mean.
LEGEND = (
    "\nCentral value over seeds (arithmetic mean; geometric for 1/εB) ± the spread over seeds (std; for 1/εB "
    "relative), then [the 68 % test-set bootstrap interval]. '> x': some seed passed no background jet, "
    "x is a 68 % CL lower bound. 'best step at edge': runs whose best validation was their first or "
    "last (the kept model may be over- or under-trained).\n"
)


def format_figure(entry: Mapping, key: str) -> str:
    """One summary cell: central ± seed spread [test-set interval], or ``> bound``."""
    central, spread = entry[f"{key}_mean"], entry[f"{key}_seed_spread"]
    low, high = entry[f"{key}_ci_low"], entry[f"{key}_ci_high"]
    if key in REJECTIONS:
        if entry.get(f"{key}_lower_bound"):
            return f"> {central:.0f}"
        text = f"{central:.1f}"
        if spread is not None:
            text += f" ± {100 * math.expm1(spread):.0f}%"
        if math.isfinite(low):
            text += f" [{low:.1f}, {high:.1f}]" if math.isfinite(high) else f" [{low:.1f}, ∞]"
        return text
    text = f"{central:.4f}"
    if spread is not None:
        text += f" ± {spread:.4f}"
    if math.isfinite(low):
        text += f" [{low:.4f}, {high:.4f}]"
    return text


def _aggregate(key: str, group: list[dict]) -> dict:
    values = np.array([r[key] for r in group], dtype=float)
    lows = np.array([r.get(f"{key}_ci_low", math.nan) for r in group], dtype=float)
    highs = np.array([r.get(f"{key}_ci_high", math.nan) for r in group], dtype=float)
    many = len(values) > 1
    if key not in REJECTIONS:
        return {f"{key}_mean": float(values.mean()), f"{key}_seed_spread": float(values.std(ddof=1)) if many else None,
                f"{key}_ci_low": float(lows.mean()), f"{key}_ci_high": float(highs.mean())}
    logs = np.log(values)
    with np.errstate(divide="ignore"):
        return {f"{key}_mean": float(np.exp(logs.mean())),
                f"{key}_seed_spread": float(logs.std(ddof=1)) if many else None,
                f"{key}_ci_low": float(np.exp(np.log(lows).mean())),
                f"{key}_ci_high": float(np.exp(np.log(highs).mean())),
                f"{key}_lower_bound": any(bool(r.get(f"{key}_lower_bound")) for r in group)}


def _number(value) -> float:
    """A metric as a float; markers such as ``"inf"`` read back, anything else missing is NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _parse(key: str, text: str):
    if key in _TEXT:
        return text
    if key in _FLAGS:
        return text == "True"
    if key in ("seed", "n_train_labels", "best_step", "steps_run", "n_background_pass_at_50",
               "n_background_pass_at_30"):
        return int(float(text)) if text else None
    return _number(text) if text else math.nan
