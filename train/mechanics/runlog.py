"""``train_log.csv``: one row per logging or validation step, the same for pretraining and finetuning.

A run log survives interruptions: on resume, the rows that the checkpoint already accounts for are
kept and the later ones (written after the checkpoint, before the crash) dropped, so a resumed run's
log equals an uninterrupted run's. It is rewritten atomically when opened, then appended row by row.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

from jjepa.common.atomic import atomic_path


class RunLog:
    """A CSV log with fixed columns; numbers are written with 6 significant digits, None as empty.

    Args:
        path: the CSV file.
        columns: its columns, in order.
        keep: on resume, which existing rows (dicts of column → text) to keep; None: start empty.
    """

    def __init__(self, path: str | Path, columns: Sequence[str], keep: Callable[[dict], bool] | None = None):
        self.path, self.columns = Path(path), tuple(columns)
        rows = []
        if keep is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [row for row in csv.DictReader(f) if keep(row)]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict) -> None:
        """Append one row (missing columns are left empty)."""
        self.append(self.path, self.columns, row)

    @staticmethod
    def append(path: str | Path, columns: Sequence[str], row: dict) -> None:
        """Append one row to the log at ``path`` opened earlier (by this or another process's ``RunLog``)."""
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=tuple(columns)).writerow({k: _text(row.get(k)) for k in columns})


def _text(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)
