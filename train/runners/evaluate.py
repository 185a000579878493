"""Compare finetuning modes: the table, the ROC overlay and the label-efficiency figure of a pipeline run.

Reads the scan folders written by ``jjepa-train scan`` (one per mode, or one with several modes)
and writes into ``out``::

    metrics.json              per mode and label count: accuracy, auc, rej_at_50, rej_at_30 (mean over seeds),
                              nested for ``dvc metrics show``
    comparison.md             the summary table, mean ± std over seeds
    label_efficiency.csv      mode, n_train_labels, rej_at_50 and auc means and stds (for ``dvc plots``)
    rejection_vs_labels.png   rejection at εS = 0.5 vs labelled jets, one band per mode
    roc.png                   test ROC of every mode at the largest label count (first seed), overlaid
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.train.report.metrics import json_safe, tagging_curves
from jjepa.train.report.plots import plot_rejection_vs_labels, plot_roc
from jjepa.train.runners.scan import cell_name, summarise, summary_markdown

log = logging.getLogger(__name__)


def read_scans(folders: list[str | Path]) -> list[dict]:
    """The rows of every ``scan.csv`` in ``folders`` (numbers as floats), with each row's cell folder."""
    rows = []
    for folder in map(Path, folders):
        table = folder / "scan.csv"
        if not table.exists():
            raise JJepaError(f"{folder}: no scan.csv; run `jjepa-train scan --out {folder} ...` first")
        with open(table, newline="") as f:
            for row in csv.DictReader(f):
                parsed = {k: (v if k == "mode" else float(v)) for k, v in row.items()}
                parsed["seed"] = int(parsed["seed"])
                parsed["n_train_labels"] = int(parsed["n_train_labels"])
                parsed["folder"] = folder / cell_name(row["mode"], float(row["label_fraction"]), int(row["seed"]))
                rows.append(parsed)
    if not rows:
        raise JJepaError(f"the scans {[str(f) for f in folders]} hold no finished cells")
    return rows


def evaluate(scans: list[str | Path], out: str | Path) -> dict:
    """Write the comparison of the modes in ``scans`` into ``out``; returns the metrics written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_scans(scans)
    summary = summarise(rows)
    metrics: dict = {}
    for entry in summary:
        metrics.setdefault(entry["mode"], {})[f"labels_{entry['n_train_labels']}"] = {
            k: entry[f"{k}_mean"] for k in ("accuracy", "auc", "rej_at_50", "rej_at_30")}
    metrics = json_safe(metrics)
    write_json_atomic(out / "metrics.json", metrics)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    columns = ("mode", "n_train_labels", "rej_at_50_mean", "rej_at_50_std", "auc_mean", "auc_std")
    with atomic_path(out / "label_efficiency.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(summary, key=lambda e: (e["mode"], e["n_train_labels"])))
    plot_rejection_vs_labels(summary, out / "rejection_vs_labels.png")
    plot_roc(_largest_cells(rows), out / "roc.png", title="test set, most labels")
    log.info("compared %d cells of %d modes into %s", len(rows), len(metrics), out)
    return metrics


def _largest_cells(rows: list[dict]) -> dict:
    """Per mode, the test ROC inputs at its largest label count (first seed): one curve per signal class."""
    curves = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        cell = min((r for r in rows if r["mode"] == mode), key=lambda r: (-r["n_train_labels"], r["seed"]))
        with np.load(cell["folder"] / "test_predictions.npz") as saved:
            labels, probs, classes = saved["labels"], saved["probs"], [str(c) for c in saved["classes"]]
        pairs = tagging_curves(labels, probs, classes)
        for name, curve in pairs.items():
            shown = f"{mode}, {name}" if len(pairs) > 1 else mode
            curves[f"{shown} ({cell['n_train_labels']} labels)"] = curve
    return curves

