"""The label-efficiency scan: finetune over a grid of label fractions × modes × seeds, then summarise.

Each cell runs in ``out/<mode>-f<fraction>-s<seed>/`` and is skipped when its ``metrics.json``
exists, so an interrupted scan resumes where it stopped; a finished cell made with other settings
(another ``--lr``, checkpoint path or label subset, say) stops the scan, before anything trains,
rather than being mixed into it.
The scan writes::

    out/scan.csv        one row per cell: mode, label_fraction, seed, n_train_labels, each figure with its
                        68 % test-set interval, lower-bound flags, best_step/steps_run/best_at_edge, val figures
    out/summary.csv     per (mode, label_fraction): central value, seed spread and test-set interval
                        (see :mod:`jjepa.train.report.summary`)
    out/summary.md      the same as a Markdown table
    out/rejection_vs_labels.png   rejection at εS = 0.5 vs labelled training jets, one curve per mode
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from jjepa.common.atomic import atomic_path
from jjepa.common.errors import JJepaError
from jjepa.train.config import FinetuneConfig, describe_differences
from jjepa.train.report.plots import plot_rejection_vs_labels
from jjepa.train.report.summary import cell_name, run_row, summarise, summary_markdown, write_rows
from jjepa.train.runners.finetune import finetune
from jjepa.train.runners.finetune_state import finished_run_differences

log = logging.getLogger(__name__)


def scan(base: FinetuneConfig, fractions: list[float], modes: list[str], seeds: list[int], out: str | Path,
         progress: bool = True) -> list[dict]:
    """Run (or skip, when done) every cell, then write the scan table, the summary and the figure.

    Args:
        base: the finetuning configuration shared by all cells (``out``, ``mode``, ``seed`` and the
            label fraction are set per cell). ``scratch`` cells copy the checkpoint's architecture
            unless ``base.preset`` is set; ``part`` cells (the Particle Transformer) are sized by
            ``base.part`` and use no checkpoint.
        fractions: label fractions in (0, 1].
        modes: ``finetune``, ``freeze``, ``scratch``, ``part``.
        seeds: one cell per seed.
        out: the scan folder.
    """
    out = Path(out)
    check_grid(base, fractions, modes, seeds)
    cells = [(mode, fraction, seed, replace(
        base, mode=mode, seed=seed, out=str(out / cell_name(mode, fraction, seed)),
        label_fraction=None if fraction >= 1 else fraction, n_labels=None,
        preset=base.preset if mode == "scratch" else None, model=base.model if mode == "scratch" else None))
        for mode in modes for fraction in fractions for seed in seeds]
    for *_, config in cells:  # before anything trains, so a mismatch late in the grid costs no hours
        if (Path(config.out) / "metrics.json").exists():
            refuse_other_settings(Path(config.out), config)
    rows = []
    for mode, fraction, seed, config in cells:
        cell = Path(config.out)
        if (cell / "metrics.json").exists():
            log.info("%s: done, skipped", cell.name)
            metrics = json.loads((cell / "metrics.json").read_text())
        else:
            log.info("%s: running", cell.name)
            # a cell interrupted mid-run left checkpoints/last.pt: continue it exactly
            metrics = finetune(config, progress=progress, resume=(cell / "checkpoints" / "last.pt").exists())
        rows.append(run_row(mode, fraction, seed, metrics))
    out.mkdir(parents=True, exist_ok=True)
    write_rows(out / "scan.csv", rows)
    summary = summarise(rows)
    write_rows(out / "summary.csv", summary, tuple(summary[0]) if summary else ())
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    plot_rejection_vs_labels(summary, out / "rejection_vs_labels.png")
    return rows


def check_grid(base: FinetuneConfig, fractions: list[float], modes: list[str], seeds: list[int]) -> None:
    """Refuse an empty grid, label fractions outside (0, 1] (a label count is not a fraction) and a label
    subset set on the shared configuration, which the cells' fractions would silently replace."""
    for name, values in (("--fractions", fractions), ("--modes", modes), ("--seeds", seeds)):
        if not values:
            raise JJepaError(f"{name} is empty; give at least one value")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise JJepaError(f"--fractions {bad} are not label fractions in (0, 1]: a scan takes the share of the "
                         "training jets per cell (e.g. 0.001,0.01,0.1,1); to scan label counts, divide them by the "
                         "number of training jets")
    if base.label_fraction is not None or base.n_labels is not None:
        raise JJepaError("a scan sets the label fraction of each cell from --fractions; drop label_fraction / "
                         "n_labels from the options, --set and the --config section")


def refuse_other_settings(cell: Path, config: FinetuneConfig) -> None:
    """Stop if the finished ``cell`` was made with other settings than ``config`` (``finished_run_differences``)."""
    differences = finished_run_differences(cell, config)
    if differences:
        raise JJepaError(f"{cell} is a finished cell made with other settings ({describe_differences(differences)}); "
                         "its results would be mixed with runs of the new ones. Scan into another --out, or delete "
                         "that folder to rerun it")
