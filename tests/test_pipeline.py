"""The DVC pipeline end to end: `dvc repro` on a copy of the repository with a tiny params.yaml."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed (pip install -e '.[pipeline]')")
def test_dvc_repro_runs_the_whole_chain_and_is_then_up_to_date(tmp_path):
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(("tests/", "bench/")):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    run(["git", "init", "-q"], tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for split in params["simulate"]["splits"].values():
        split["n_jets"] = 150
    params["cluster"].update(chunk_size=1000, workers=0)
    params["pretrain"].update(steps=20, batch_size=64, log_every=10, val_every=10, checkpoint_every=10, device="cpu")
    params["finetune"].update(epochs=1, min_steps=5, batch_size=64, device="cpu")
    params["scan"].update(fractions="0.2,1")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    dvc = [sys.executable, "-m", "dvc"]
    run(dvc + ["repro"], tmp_path)
    metrics = json.loads((tmp_path / "reports" / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"finetune", "freeze", "scratch"}
    for mode in metrics.values():
        assert set(mode) == {"labels_60", "labels_300"}
        assert all(set(cell) == {"accuracy", "auc", "rej_at_50", "rej_at_30"} for cell in mode.values())
    pretrain = json.loads((tmp_path / "runs" / "pretrain" / "metrics.json").read_text())
    assert pretrain["step"] == 20
    assert (tmp_path / "reports" / "evaluate" / "roc.png").stat().st_size > 0

    again = run(dvc + ["repro"], tmp_path)
    assert "Running stage" not in again, again
    assert "up to date" in run(dvc + ["status"], tmp_path)
    assert "finetune.labels_300.auc" in run(dvc + ["metrics", "show"], tmp_path)
