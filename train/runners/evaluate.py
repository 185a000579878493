"""Compare finetuning modes: the table, paired differences, the ROC overlay and the label-efficiency figure.

Reads the scan folders written by ``jjepa-train scan`` (one per mode, or one with several modes)
and writes into ``out``::

    metrics.json              per mode and label count: accuracy, auc, rej_at_50, rej_at_30 (seed averages,
                              geometric for rejections) and the 68 % test-set intervals of auc and rej_at_50,
                              nested for ``dvc metrics show``
    comparison.md             the summary table (central ± seed spread [test-set interval]) and the
                              paired comparisons
    paired.csv                every mode against ``scratch`` (and ``part`` when present), per label count:
                              AUC difference and rejection ratio with 68 %/95 % intervals
    label_efficiency.csv      mode, n_train_labels, rejection and AUC with their uncertainties (for ``dvc plots``)
    rejection_vs_labels.png   rejection at εS = 0.5 vs labelled jets, with error bars and seed bands
    roc.png                   test ROC of every mode at the largest label count (first seed), overlaid

The paired comparisons use the runs' saved test predictions: both modes were scored on the same
test jets and, seed by seed, trained on the same label subset, so a paired bootstrap over the jets
(and over the seeds) measures their difference far more precisely than two separate intervals.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import yaml
from jjepa.common.atomic import atomic_path, write_json_atomic
from jjepa.common.errors import JJepaError
from jjepa.train.config import FINETUNE_RESUMABLE_CHANGES, config_differences, describe_differences
from jjepa.train.report.intervals import paired_deltas
from jjepa.train.report.metrics import json_safe, tagging_curves
from jjepa.train.report.plots import plot_rejection_vs_labels, plot_roc
from jjepa.train.report.summary import cell_name, read_rows, summarise, summary_markdown, write_rows

log = logging.getLogger(__name__)

#: The modes every other mode is compared with, when present.
BASELINES: tuple[str, ...] = ("scratch", "part")

#: The columns of ``paired.csv``.
PAIRED_COLUMNS: tuple[str, ...] = ("mode", "baseline", "n_train_labels", "metric", "delta", "ci_low", "ci_high",
                                   "n_seeds", "ci95_low", "ci95_high", "excludes_null_68", "excludes_null_95")


def read_scans(folders: list[str | Path]) -> list[dict]:
    """The rows of every ``scan.csv`` in ``folders``, typed, with each row's cell folder.

    A folder given twice is read once. Refused: the same cell (mode, label fraction, seed) in two scans,
    and cells of one mode and label fraction made with other settings (``check_same_settings``): their
    seeds would be averaged as if they were one configuration.
    """
    rows, seen, cells = [], set(), {}
    for folder in map(Path, folders):
        if folder.resolve() in seen:
            log.warning("%s is given twice; it is read once", folder)
            continue
        seen.add(folder.resolve())
        table = folder / "scan.csv"
        if not table.exists():
            what = ("a finetuning run" if (folder / "metrics.json").exists() else
                    "a shard folder" if (folder / "manifest.json").exists() else "not a finished scan")
            raise JJepaError(f"{folder}: no scan.csv ({what}); evaluate compares scan folders, the --out of "
                             "`jjepa-train scan`: run the scan first, or give its folder")
        for row in read_rows(table):
            row["folder"] = folder / cell_name(row["mode"], row["label_fraction"], row["seed"])
            key = (row["mode"], row["label_fraction"], row["seed"])
            if key in cells:
                raise JJepaError(f"{cells[key]} and {row['folder']} are the same cell (mode {key[0]}, label fraction "
                                 f"{key[1]:g}, seed {key[2]}) from two scans; evaluate one run per cell: leave one "
                                 "of those scans out")
            cells[key] = row["folder"]
            rows.append(row)
    if not rows:
        raise JJepaError(f"the scans {[str(f) for f in folders]} hold no finished cells")
    check_same_settings(rows)
    return rows


def check_same_settings(rows: list[dict]) -> None:
    """Refuse cells of one mode and label fraction whose ``config.yaml`` differ beyond the seed (and where or
    how they ran: ``FINETUNE_RESUMABLE_CHANGES``)."""
    first: dict[tuple, tuple[Path, dict]] = {}
    for row in rows:
        path = row["folder"] / "config.yaml"
        if not path.exists():
            continue
        settings = yaml.safe_load(path.read_text()) or {}
        key = (row["mode"], row["label_fraction"])
        if key not in first:
            first[key] = (row["folder"], settings)
            continue
        folder, reference = first[key]
        row_name = row["folder"].name
        differences = config_differences(reference, settings, FINETUNE_RESUMABLE_CHANGES | {"seed"})
        if differences:
            raise JJepaError(f"{folder} and {row['folder']} ({key[0]}, label fraction {key[1]:g}) were made with other "
                             f"settings ({describe_differences(differences, f'in {folder.name}', f'in {row_name}')}); "
                             "their seeds cannot be averaged: evaluate scans of one configuration per mode")


def evaluate(scans: list[str | Path], out: str | Path, n_resamples: int = 1000) -> dict:
    """Write the comparison of the modes in ``scans`` into ``out``; returns the metrics written.

    Args:
        scans: scan folders.
        out: the report folder.
        n_resamples: bootstrap resamples of the paired comparisons.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_scans(scans)
    summary = summarise(rows)
    metrics: dict = {}
    for entry in summary:
        figures = {k: entry[f"{k}_mean"] for k in ("accuracy", "auc", "rej_at_50", "rej_at_30")}
        figures.update({f"{k}_ci_{side}": entry[f"{k}_ci_{side}"] for k in ("auc", "rej_at_50")
                        for side in ("low", "high")})
        metrics.setdefault(entry["mode"], {})[f"labels_{entry['n_train_labels']}"] = figures
    metrics = json_safe(metrics)
    paired = paired_comparisons(rows, n_resamples)  # before anything is written: it may fail on a missing run
    write_json_atomic(out / "metrics.json", metrics)
    write_rows(out / "paired.csv", paired, PAIRED_COLUMNS)
    with atomic_path(out / "comparison.md") as tmp:
        tmp.write_text(summary_markdown(summary) + "\n" + paired_markdown(paired))
    columns = ("mode", "n_train_labels", "n_seeds", "rej_at_50_mean", "rej_at_50_seed_spread", "rej_at_50_ci_low",
               "rej_at_50_ci_high", "auc_mean", "auc_seed_spread", "auc_ci_low", "auc_ci_high")
    write_rows(out / "label_efficiency.csv", sorted(summary, key=lambda e: (e["mode"], e["n_train_labels"])), columns)
    plot_rejection_vs_labels(summary, out / "rejection_vs_labels.png")
    plot_roc(_largest_cells(rows), out / "roc.png", title="test set, most labels")
    log.info("compared %d cells of %d modes into %s", len(rows), len(metrics), out)
    return metrics


def paired_comparisons(rows: list[dict], n_resamples: int = 1000) -> list[dict]:
    """Every mode against each baseline present, per label fraction, over the seeds both ran.

    Returns rows of :data:`PAIRED_COLUMNS`: ``auc`` (difference, mode − baseline) and
    ``rej_at_50_ratio`` (mode / baseline); ``excludes_null_*`` says whether the interval excludes
    0 (a difference) or 1 (a ratio).

    Raises:
        JJepaError: two runs to be paired were scored on different test jets.
    """
    cells = {(r["mode"], r["label_fraction"], r["seed"]): r for r in rows}
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    table = []
    for baseline in (b for b in BASELINES if b in modes):
        # A baseline against a later one only (part vs scratch, not also scratch vs part: the same pair inverted).
        for mode in (m for m in modes if m != baseline and BASELINES.index(baseline) < _rank(m)):
            for fraction in sorted({r["label_fraction"] for r in rows}):
                seeds = sorted(s for (m, f, s) in cells if m == mode and f == fraction
                               and (baseline, fraction, s) in cells)
                if not seeds:
                    continue
                labels, classes, probs_a = _predictions([cells[(mode, fraction, s)] for s in seeds])
                other_labels, _, probs_b = _predictions([cells[(baseline, fraction, s)] for s in seeds])
                if not (np.array_equal(labels, other_labels) and _same_test_shards(
                        [cells[(mode, fraction, s)] for s in seeds] + [cells[(baseline, fraction, s)] for s in seeds])):
                    raise JJepaError(f"{cells[(mode, fraction, seeds[0])]['folder']} and "
                                     f"{cells[(baseline, fraction, seeds[0])]['folder']} were scored on different "
                                     "test jets; pair only runs that share --test")
                deltas = paired_deltas(labels, classes, probs_a, probs_b, n_resamples)
                n_labels = cells[(mode, fraction, seeds[0])]["n_train_labels"]
                for metric, result in deltas.items():
                    null = 1.0 if metric.endswith("ratio") else 0.0
                    (low, high), (low95, high95) = result["ci68"], result["ci95"]
                    table.append({"mode": mode, "baseline": baseline, "n_train_labels": n_labels, "metric": metric,
                                  "delta": result["delta"], "ci_low": low, "ci_high": high,
                                  "n_seeds": result["n_seeds"], "ci95_low": low95, "ci95_high": high95,
                                  "excludes_null_68": not low <= null <= high,
                                  "excludes_null_95": not low95 <= null <= high95})
    return table


def _rank(mode: str) -> int:
    """Where a mode stands among the baselines (a non-baseline mode after all of them)."""
    return BASELINES.index(mode) if mode in BASELINES else len(BASELINES)


def paired_markdown(paired: list[dict]) -> str:
    """The paired comparisons as a Markdown table, with a legend."""
    if not paired:
        return "No paired comparison: no baseline mode (scratch, part) shares label subsets with another mode.\n"
    lines = ["| mode | baseline | labelled jets | seeds | ΔAUC [68 %] | 95 % excl. 0 | "
             "rejection ratio [68 %] | 95 % excl. 1 |\n", "|---|---|---:|---:|---:|---:|---:|---:|\n"]
    keyed = {(r["mode"], r["baseline"], r["n_train_labels"], r["metric"]): r for r in paired}
    for mode, baseline, n_labels in dict.fromkeys((r["mode"], r["baseline"], r["n_train_labels"]) for r in paired):
        auc, ratio = keyed[(mode, baseline, n_labels, "auc")], keyed[(mode, baseline, n_labels, "rej_at_50_ratio")]
        lines.append(f"| {mode} | {baseline} | {n_labels} | {auc['n_seeds']} | "
                     f"{auc['delta']:+.4f} [{auc['ci_low']:+.4f}, {auc['ci_high']:+.4f}] | "
                     f"{'yes' if auc['excludes_null_95'] else 'no'} | "
                     f"{ratio['delta']:.2f} [{ratio['ci_low']:.2f}, {ratio['ci_high']:.2f}] | "
                     f"{'yes' if ratio['excludes_null_95'] else 'no'} |\n")
    lines.append("\nPaired on the same test jets and, seed by seed, the same label subsets: a bootstrap over the "
                 "jets and the seeds. ΔAUC is mode − baseline; the rejection ratio is 1/εB at εS = 0.5 of the mode "
                 "over the baseline's (geometric mean over seeds).\n")
    if any(r["n_seeds"] < 2 for r in paired):
        lines.append("\n**One seed:** its interval holds the test-set fluctuations only. Another label subset and "
                     "initialisation can move a difference by more; run several seeds (`scan --seeds 0,1,2`) before "
                     "quoting one.\n")
    return "".join(lines)


def _predictions(cells: list[dict]) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Test labels, class names and each cell's (J, C) probabilities, from the cells' test_predictions.npz."""
    labels, classes, probs = None, None, []
    for cell in cells:
        path = cell["folder"] / "test_predictions.npz"
        if not path.exists():
            raise JJepaError(f"{path}: missing; rerun that scan cell (delete its folder and run the scan again)")
        with np.load(path) as saved:
            if labels is not None and not np.array_equal(labels, saved["labels"]):
                raise JJepaError(f"{path}: test jets differ from {cells[0]['folder']}'s")
            labels, classes = saved["labels"], [str(c) for c in saved["classes"]]
            probs.append(saved["probs"].astype(np.float64))
    return labels, classes, probs


def _same_test_shards(cells: list[dict]) -> bool:
    """Whether the cells' test shards are the same (``test_shards_sha256`` in metrics.json, where recorded:
    equal label vectors alone do not tell two test folders apart)."""
    digests = set()
    for cell in cells:
        path = cell["folder"] / "metrics.json"
        digest = json.loads(path.read_text()).get("test_shards_sha256") if path.exists() else None
        if digest is not None:
            digests.add(digest)
    return len(digests) <= 1


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

