"""Finetuning resumes exactly (stop_after, SIGTERM), refuses what it cannot continue; pretraining keeps
its last N checkpoints and refuses a resume with another process count, saying how to proceed."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from jjepa.common.errors import JJepaError
from jjepa.train.cli import main as cli
from jjepa.train.config import resolve_finetune_config, resolve_pretrain_config
from jjepa.train.data.loader import FINETUNE_FIELDS, ShardLoader, ShardSet
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.runners import finetune as finetune_module
from jjepa.train.runners.finetune import finetune
from jjepa.train.runners.inference import rank_view, reading_order
from jjepa.train.runners.pretrain import pretrain
from sklearn.metrics import roc_auc_score

#: 640 labelled jets in batches of 64: 10 steps per epoch, 20 steps, a validation every 5.
BASE = {"mode": "scratch", "preset": "tiny", "batch_size": 64, "n_labels": 640, "epochs": 2, "min_steps": 10,
        "eval_every": 5, "val_batches": 2, "device": "cpu", "prefetch": 2, "bootstrap_resamples": 20}


def ft_config(train, val, test, out, **kw):
    return resolve_finetune_config({"train": str(train), "val": str(val), "test": str(test), "out": str(out),
                                    **BASE, **kw})


def run_outputs(out) -> dict:
    """What a finished run leaves that must not depend on interruptions (train_seconds aside)."""
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.pop("train_seconds")
    best = load_checkpoint(out / "checkpoints" / "best.pt", kind="finetune")
    predictions = np.load(out / "test_predictions.npz")
    return {"metrics": metrics, "log": (out / "train_log.csv").read_text(), "best": best["classifier"],
            "best_step": best["step"], "probs": predictions["probs"]}


def assert_same_run(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["log"] == b["log"]
    assert a["best_step"] == b["best_step"]
    assert a["best"].keys() == b["best"].keys()
    for name, value in a["best"].items():
        assert torch.equal(value, b["best"][name]), f"best.pt {name} differs after resume"
    assert np.array_equal(a["probs"], b["probs"])


@pytest.fixture(scope="module")
def straight(toy_train, toy_val, toy_test, tmp_path_factory):
    """An uninterrupted run of ``BASE``, fp32 and fp16."""
    runs = {}
    for precision in ("fp32", "fp16"):
        out = tmp_path_factory.mktemp(f"straight-{precision}") / "run"
        finetune(ft_config(toy_train, toy_val, toy_test, out, precision=precision), progress=False)
        runs[precision] = run_outputs(out)
    return runs


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_stop_after_then_resume_equals_a_straight_run(toy_train, toy_val, toy_test, tmp_path, straight, precision):
    out = tmp_path / "run"
    # Step 7 lies between validations: the running training loss and the best model travel in last.pt.
    first = finetune(ft_config(toy_train, toy_val, toy_test, out, precision=precision, stop_after=7), progress=False)
    assert first == {"step": 7, "total_steps": 20, "stopped": True}
    saved = load_checkpoint(out / "checkpoints" / "last.pt", kind="finetune_run")
    assert saved["step"] == 7 and saved["validated"] == [5] and saved["running_steps"] == 2
    if precision == "fp16":
        assert saved["scaler"]["scale"] > 0, "the fp16 gradient scaler's state is checkpointed"
    else:
        assert saved["scaler"] == {}
    assert not (out / "metrics.json").exists()
    finetune(ft_config(toy_train, toy_val, toy_test, out, precision=precision), progress=False, resume=True)
    assert_same_run(straight[precision], run_outputs(out))
    assert not (out / "checkpoints" / "last.pt").exists(), "a finished run keeps best.pt only"


def test_a_failure_in_the_final_evaluation_keeps_the_training(toy_train, toy_val, toy_test, tmp_path, straight,
                                                               monkeypatch):
    real_evaluation = finetune_module.final_evaluation

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finetune_module, "final_evaluation", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError):
        finetune(ft_config(toy_train, toy_val, toy_test, out, precision="fp32"), progress=False)
    saved = load_checkpoint(out / "checkpoints" / "last.pt", kind="finetune_run")
    assert saved["done"] and saved["step"] == 20
    monkeypatch.setattr(finetune_module, "final_evaluation", real_evaluation)
    finetune(ft_config(toy_train, toy_val, toy_test, out, precision="fp32"), progress=False, resume=True)
    assert_same_run(straight["fp32"], run_outputs(out))


def test_sigterm_stops_with_a_checkpoint_that_resumes_exactly(toy_train, toy_val, toy_test, tmp_path, straight,
                                                            monkeypatch):
    real_step = finetune_module.train_step
    calls = {"n": 0}

    def step_then_sigterm(*args, **kwargs):
        real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 12:  # a batch system's notice, in the middle of a step
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(finetune_module, "train_step", step_then_sigterm)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(ft_config(toy_train, toy_val, toy_test, out, precision="fp32"), progress=False)
    assert load_checkpoint(out / "checkpoints" / "last.pt", kind="finetune_run")["step"] == 12
    monkeypatch.setattr(finetune_module, "train_step", real_step)
    finetune(ft_config(toy_train, toy_val, toy_test, out, precision="fp32"), progress=False, resume=True)
    assert_same_run(straight["fp32"], run_outputs(out))


def test_resume_refuses_what_it_cannot_continue(toy_train, toy_val, toy_test, tmp_path):
    out = tmp_path / "run"
    finetune(ft_config(toy_train, toy_val, toy_test, out, stop_after=3), progress=False)
    with pytest.raises(JJepaError, match="unfinished finetuning run .* pass --resume"):
        finetune(ft_config(toy_train, toy_val, toy_test, out), progress=False)
    with pytest.raises(JJepaError, match=r"other settings \(lr: 0\.\d+ in the checkpoint, 0\.1 now\)"):
        finetune(ft_config(toy_train, toy_val, toy_test, out, lr=0.1), progress=False, resume=True)
    with pytest.raises(JJepaError, match="no such checkpoint"):
        finetune(ft_config(toy_train, toy_val, toy_test, tmp_path / "other"), progress=False, resume=True)
    with pytest.raises(JJepaError, match="this is the resume checkpoint of an unfinished finetuning run.*but a pretraining checkpoint"):
        load_checkpoint(out / "checkpoints" / "last.pt", kind="pretrain")
    # Written by 2 processes: resuming in one is refused with the way to go on.
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**saved, "world_size": 2}, out / "checkpoints" / "last.pt")
    with pytest.raises(JJepaError, match=r"2 process\(es\), this run has 1.*--nproc-per-node 2"):
        finetune(ft_config(toy_train, toy_val, toy_test, out), progress=False, resume=True)


def test_cli_finetune_stop_after_resume_and_a_finished_run(toy_train, toy_val, toy_test, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--train", str(toy_train), "--val", str(toy_val), "--test", str(toy_test), "--out", str(out),
            "--mode", "scratch", "--preset", "tiny", "--batch-size", "64", "--n-labels", "320", "--epochs", "2",
            "--device", "cpu", "--no-progress", "--set", "min_steps=4", "--set", "bootstrap_resamples=5"]
    first = CliRunner().invoke(cli, [*args, "--stop-after", "2"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output.strip().splitlines()[-1])["stopped"] is True
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output
    done = CliRunner().invoke(cli, [*args, "--resume"])
    assert done.exit_code == 0, done.output
    metrics = json.loads(done.output.strip().splitlines()[-1])
    saved = np.load(out / "test_predictions.npz")
    assert metrics["steps_run"] == 10
    assert metrics["auc"] == pytest.approx(roc_auc_score(saved["labels"], saved["probs"][:, 1]), abs=1e-12)
    finished = CliRunner().invoke(cli, [*args, "--resume"])  # nothing left to do: the metrics, untouched
    assert finished.exit_code == 0 and json.loads(finished.output.strip().splitlines()[-1]) == metrics


@pytest.mark.parametrize("max_batches", [None, 3])
def test_rank_views_cover_the_single_process_batches(toy_val, max_batches):
    """Under DDP each rank evaluates the single-process batches i ≡ rank (mod W); put back by slot they are
    exactly the jets one process reads, in its order (what ``predict_over_ranks`` gathers)."""
    shards = ShardSet(toy_val).with_min_subjets(3)  # a view already: positions compose
    batch_size = 48

    def jets(view, max_batches=None):
        loader = ShardLoader(view, batch_size, block_size=64 if max_batches else batch_size, seed=0,
                             shuffle=max_batches is not None, rank=0, world_size=1, epochs=1,
                             fields=FINETUNE_FIELDS, pin_memory=False)
        out = [b["jets"].numpy() for i, b in zip(range(max_batches or 10**9), loader.batches(), strict=False)]
        return np.concatenate(out)

    single = jets(shards, max_batches)
    order = reading_order(shards, batch_size, max_batches)
    assert len(order) == len(single)
    gathered = np.full_like(single, np.nan)
    for rank in range(3):
        view, slots = rank_view(shards, order, batch_size, rank, 3)
        assert np.isnan(gathered[slots]).all(), "a jet evaluated by two ranks"
        gathered[slots] = jets(view)
    assert np.array_equal(gathered, single)


def pretrain_config(data, out, **kw):
    base = {"data": str(data), "out": str(out), "preset": "tiny", "batch_size": 64, "log_every": 5,
            "checkpoint_every": 4, "device": "cpu", "prefetch": 2, "steps": 20}
    return resolve_pretrain_config({**base, **kw})


def test_pretraining_keeps_the_last_n_step_checkpoints(toy_train, tmp_path):
    out = tmp_path / "run"
    pretrain(pretrain_config(toy_train, out, keep_checkpoints=2, stop_after=10), progress=False)
    folder = out / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step-000000008.pt", "step-000000010.pt"]
    pretrain(pretrain_config(toy_train, out, keep_checkpoints=2), resume=True, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step-000000016.pt", "step-000000020.pt"]
    assert load_checkpoint(folder / "step-000000016.pt")["step"] == 16
    last, copy = load_checkpoint(folder / "last.pt"), load_checkpoint(folder / "step-000000020.pt")
    assert all(torch.equal(v, copy["model"][k]) for k, v in last["model"].items())
    plain = tmp_path / "plain"
    pretrain(pretrain_config(toy_train, plain, steps=8), progress=False)
    assert [p.name for p in (plain / "checkpoints").iterdir()] == ["last.pt"], "keep_checkpoints=0: last.pt only"


def test_pretraining_resumes_with_the_same_process_count_and_refuses_another(toy_train, tmp_path):
    out = tmp_path / "run"
    pretrain(pretrain_config(toy_train, out, stop_after=8), progress=False)
    last = out / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    torch.save({**saved, "world_size": 4}, last)
    with pytest.raises(JJepaError, match=r"written by 4 process\(es\), this run has 1.*--nproc-per-node 4"):
        pretrain(pretrain_config(toy_train, out), resume=True, progress=False)
    torch.save(saved, last)  # the same count (1) as the run that wrote it: it continues
    assert pretrain(pretrain_config(toy_train, out), resume=True, progress=False)["step"] == 20


def test_part_mode_resumes_exactly_with_its_dropout_and_random_trimming(toy_train, toy_val, toy_test, tmp_path):
    """ParT draws dropout masks and trims sequences at random in training: the generator state travels too."""
    part = {"mode": "part", "preset": None, "part.embed_dim": 16, "part.pair_embed_dim": 8, "part.num_heads": 2,
            "part.num_layers": 1, "part.num_cls_layers": 1, "part.max_particles": 48, "n_labels": 320,
            "eval_every": 3, "min_steps": 8}
    finetune(ft_config(toy_train, toy_val, toy_test, tmp_path / "straight", **part), progress=False)
    finetune(ft_config(toy_train, toy_val, toy_test, tmp_path / "split", stop_after=4, **part), progress=False)
    finetune(ft_config(toy_train, toy_val, toy_test, tmp_path / "split", **part), progress=False, resume=True)
    assert_same_run(run_outputs(tmp_path / "straight"), run_outputs(tmp_path / "split"))
