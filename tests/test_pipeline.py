"""The DVC pipeline end to end: `dvc repro` on a copy of the repository with a tiny params.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from jjepa.preprocess.rawformats import write_toptagging_h5
from jjepa.preprocess.readers.base import JetChunk

REPO = Path(__file__).resolve().parents[1]


#: A git identity for the commits `dvc exp run` makes in the throw-away repository.
GIT_ENV = {"GIT_AUTHOR_NAME": "jjepa test", "GIT_AUTHOR_EMAIL": "test@jjepa.invalid",
           "GIT_COMMITTER_NAME": "jjepa test", "GIT_COMMITTER_EMAIL": "test@jjepa.invalid"}


def run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def take_jets(chunk: JetChunk, jets: list[int]) -> JetChunk:
    """The chunk's jets ``jets``, in that order."""
    particles = np.concatenate([np.arange(chunk.offsets[j], chunk.offsets[j + 1]) for j in jets])
    offsets = np.concatenate([[0], np.cumsum(np.diff(chunk.offsets)[jets])]).astype(np.int64)
    return replace(chunk, px=chunk.px[particles], py=chunk.py[particles], pz=chunk.pz[particles],
                   energy=chunk.energy[particles], offsets=offsets, labels=chunk.labels[jets], stop=len(jets))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed (pip install -e '.[pipeline]')")
def test_dvc_repro_runs_the_whole_chain_and_is_then_up_to_date(tmp_path, simulated_jets, check_figure):
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(("tests/", "bench/")):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tmp_path / name)
    run(["git", "init", "-q"], tmp_path)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for split in (*params["simulate"]["pretrain"].values(), *params["simulate"]["finetune"].values()):
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
        assert all(set(cell) == {"accuracy", "auc", "rej_at_50", "rej_at_30", "auc_ci_low", "auc_ci_high",
                                 "rej_at_50_ci_low", "rej_at_50_ci_high"} for cell in mode.values())
    # Pretraining on jets in the JetClass ROOT layout, finetuning on others in the Top Tagging HDF5 layout.
    pretrain_shards = json.loads((tmp_path / "reports" / "shards-pretrain-train.json").read_text())
    finetune_shards = json.loads((tmp_path / "reports" / "shards-finetune-train.json").read_text())
    assert {name: n for name, n in pretrain_shards["classes"].items() if n} == {"QCD": 150, "Tbqq": 150}
    assert finetune_shards["classes"] == {"QCD": 150, "top": 150}
    assert (tmp_path / "data" / "raw" / "finetune" / "train" / "train.h5").is_file()
    assert (tmp_path / "reports" / "evaluate" / "paired.csv").is_file()
    pretrain = json.loads((tmp_path / "runs" / "pretrain" / "metrics.json").read_text())
    assert pretrain["step"] == 20
    check_figure(tmp_path / "reports" / "evaluate" / "roc.png")
    check_figure(tmp_path / "reports" / "evaluate" / "rejection_vs_labels.png")

    again = run(dvc + ["repro"], tmp_path)
    assert "Running stage" not in again, again
    assert "up to date" in run(dvc + ["status"], tmp_path)
    assert "finetune.labels_300.auc" in run(dvc + ["metrics", "show"], tmp_path)

    # A real dataset is one parameter away: the simulate stage then simulates nothing and cluster
    # reads the dataset's split from finetune_data.root (here a small file in the Top Tagging layout).
    toptagging = tmp_path.parent / f"{tmp_path.name}-toptagging"
    toptagging.mkdir()
    write_toptagging_h5(toptagging / "val.h5", take_jets(simulated_jets, [0, 1, 2, 1000, 1001]))
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-qm", "demo run"], tmp_path)
    switch = ["-S", "finetune_data.dataset=toptagging", "-S", f"finetune_data.root={toptagging}"]
    run(dvc + ["exp", "run", *switch, "simulate-finetune@val", "cluster-finetune@val"], tmp_path)
    shards = json.loads((tmp_path / "reports" / "shards-finetune-val.json").read_text())
    assert shards["n_jets"] == 5
    assert shards["classes"] == {"QCD": 2, "top": 3}
    assert (tmp_path / "data" / "raw" / "finetune" / "val" / "NOT_SIMULATED.txt").exists()
