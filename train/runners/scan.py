"""The label-efficiency scan: finetune over a grid of label fractions × modes × seeds, then summarise.

Each cell runs in ``out/<mode>-f<fraction>-s<seed>/`` and is skipped when its ``metrics.json``
exists, so an interrupted scan resumes where it stopped. The scan writes::

    out/scan.csv        one row per cell: mode, label_fraction, seed, n_train_labels, accuracy, auc, rej_at_50, rej_at_30
    out/summary.csv     mean and standard deviation over seeds per (mode, label_fraction)
    out/summary.md      the same as a Markdown table (mean ± std)
    out/rejection_vs_labels.png   rejection at εS = 0.5 vs labelled training jets, one band per mode
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
from jjepa.common.atomic import atomic_path
from jjepa.train.config import FinetuneConfig
from jjepa.train.report.plots import plot_rejection_vs_labels
from jjepa.train.runners.finetune import finetune

log = logging.getLogger(__name__)

SCAN_COLUMNS: tuple[str, ...] = ("mode", "label_fraction", "seed", "n_train_labels", "accuracy", "auc",
                                 "rej_at_50", "rej_at_30")
_FIGURES = ("accuracy", "auc", "rej_at_50", "rej_at_30")


def cell_name(mode: str, fraction: float, seed: int) -> str:
    """The folder of one cell, e.g. ``finetune-f0.01-s0``."""
    return f"{mode}-f{fraction:g}-s{seed}"


def scan(base: FinetuneConfig, fractions: list[float], modes: list[str], seeds: list[int], out: str | Path,
         progress: bool = True) -> list[dict]:
    """Run (or skip, when done) every cell, then write the scan table, the summary and the figure.

    Args:
        base: the finetuning configuration shared by all cells (``out``, ``mode``, ``seed`` and the
            label fraction are set per cell). ``scratch`` cells copy the checkpoint's architecture
            unless ``base.preset`` is set.
        fractions: label fractions in (0, 1].
        modes: ``finetune``, ``freeze``, ``scratch``.
        seeds: one cell per seed.
        out: the scan folder.
    """
    out = Path(out)
    rows = []
    for mode in modes:
        for fraction in fractions:
            for seed in seeds:
                cell = out / cell_name(mode, fraction, seed)
                if (cell / "metrics.json").exists():
                    log.info("%s: done, skipped", cell.name)
                    metrics = json.loads((cell / "metrics.json").read_text())
                else:
                    log.info("%s: running", cell.name)
                    config = replace(base, mode=mode, seed=seed, out=str(cell),
                                     label_fraction=None if fraction >= 1 else fraction, n_labels=None,
                                     preset=base.preset if mode == "scratch" else None,
                                     model=base.model if mode == "scratch" else None)
                    metrics = finetune(config, progress=progress)
                rows.append({"mode": mode, "label_fraction": fraction, "seed": seed,
                             **{k: metrics.get(k) for k in SCAN_COLUMNS[3:]}})
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "scan.csv", SCAN_COLUMNS, rows)
    summary = summarise(rows)
    _write_csv(out / "summary.csv", tuple(summary[0]) if summary else (), summary)
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    plot_rejection_vs_labels(summary, out / "rejection_vs_labels.png")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds for every (mode, label_fraction)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["label_fraction"]), []).append(row)
    summary = []
    for (mode, fraction), group in groups.items():
        entry = {"mode": mode, "label_fraction": fraction, "n_seeds": len(group),
                 "n_train_labels": int(np.mean([r["n_train_labels"] for r in group]))}
        for key in _FIGURES:
            values = np.array([_finite(r[key]) for r in group], dtype=float)
            entry[f"{key}_mean"] = float(np.mean(values))
            entry[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def summary_markdown(summary: list[dict]) -> str:
    """A Markdown table: mode, fraction, labels, then each figure as mean ± std over seeds."""
    header = "| mode | label fraction | labelled jets | seeds | accuracy | AUC | 1/εB at εS=0.5 | 1/εB at εS=0.3 |\n"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|\n"]
    for e in summary:
        cells = [f"{e[f'{k}_mean']:.4f} ± {e[f'{k}_std']:.4f}" if k in ("accuracy", "auc")
                 else f"{e[f'{k}_mean']:.1f} ± {e[f'{k}_std']:.1f}" for k in _FIGURES]
        lines.append(f"| {e['mode']} | {e['label_fraction']:g} | {e['n_train_labels']} | {e['n_seeds']} | "
                     + " | ".join(cells) + " |\n")
    return "".join(lines)


def _finite(value) -> float:
    """A metric as a float; rejections stored as non-finite markers become NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
