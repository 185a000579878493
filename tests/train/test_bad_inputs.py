"""Issue 16, trainer side: every bad value or file stops the run with its file (and row), exit 1, and
nothing is written that a later step would trust (no NaN checkpoint, no metrics from a broken run)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from jjepa.common.atomic import sha256_file
from jjepa.common.errors import JJepaError, ShardError
from jjepa.common.shards import read_manifest, shard_name, write_manifest
from jjepa.common.testing import write_toy_shards
from jjepa.train.cli import main as cli
from jjepa.train.config import ConfigError, resolve_pretrain_config
from jjepa.train.data import integrity
from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardLoader, ShardSet
from jjepa.train.mechanics import checkpoint as checkpoint_module
from jjepa.train.mechanics.checkpoint import load_checkpoint
from jjepa.train.mechanics.diagnostics import effective_rank
from jjepa.train.runners import pretrain as pretrain_module
from jjepa.train.runners.pretrain import pretrain

S, N = 10, 12  # as the toy fixtures of conftest.py

PRETRAIN = ["--preset", "tiny", "--steps", "12", "--batch-size", "32", "--device", "cpu", "--no-progress",
            "--set", "log_every=4", "--set", "prefetch=2", "--set", "val_batches=2"]


def finetune_args(train, val, test, out, *extra):
    return ["finetune", "--train", str(train), "--val", str(val), "--test", str(test), "--out", str(out),
            "--mode", "scratch", "--preset", "tiny", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
            "--no-progress", "--set", "min_steps=6", "--set", "eval_every=3", "--set", "prefetch=2", *extra]


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def toy_folder(path, n_particles=N, n_shards=2, jets=100, seed=0):
    write_toy_shards(path, n_shards=n_shards, jets_per_shard=jets, n_subjets=S, n_particles=n_particles, seed=seed)
    return path


def poison(folder, shard: int, rows: list[int], field: str = "particles", value: float = np.nan,
           rehash: bool = True) -> None:
    """Write ``value`` into real slots of ``field`` of ``rows`` of a shard; ``rehash`` makes the manifest agree
    (a shard written from bad input), otherwise the file no longer matches its recorded sha256."""
    path = folder / shard_name(shard)
    with h5py.File(path, "r+") as f:
        data = f[field][...]
        for row in rows:
            data[row, 0, ..., 0] = value
        f[field][...] = data
    if rehash:
        manifest = read_manifest(folder)
        manifest.shards[shard].sha256 = sha256_file(path)
        write_manifest(folder, manifest)


def assert_nothing_trusted(run) -> None:
    assert not (run / "metrics.json").exists()
    assert not (run / "checkpoints" / "last.pt").exists()
    assert not (run / "checkpoints" / "best.pt").exists()


# --- case 1 and 3: non-finite values where they enter -----------------------------------------------

def test_finetune_on_nan_particles_stops_naming_the_shard_and_rows(tmp_path):
    train = toy_folder(tmp_path / "train")
    poison(train, 1, [3, 7])
    val, test = toy_folder(tmp_path / "val", seed=10), toy_folder(tmp_path / "test", seed=20)
    result = invoke(finetune_args(train, val, test, tmp_path / "ft"))
    assert result.exit_code == 1, result.output
    assert "shard-00001.h5" in result.output and "row(s) 3, 7" in result.output and "non-finite" in result.output
    assert "Traceback" not in result.output
    assert_nothing_trusted(tmp_path / "ft")


def test_pretrain_on_inf_subjets_stops_naming_the_shard_and_rows(tmp_path):
    data = toy_folder(tmp_path / "data")
    poison(data, 0, [5], field="subjets", value=np.inf)
    result = invoke(["pretrain", "--data", data, "--out", tmp_path / "run", *PRETRAIN])
    assert result.exit_code == 1, result.output
    assert "shard-00000.h5" in result.output and "row(s) 5" in result.output and "'subjets'" in result.output
    assert_nothing_trusted(tmp_path / "run")


def test_rows_are_named_in_a_selected_view(tmp_path):
    data = toy_folder(tmp_path / "data")
    poison(data, 1, [40])
    shards = ShardSet(data).select([np.arange(0, 100, 2), np.arange(30, 60)])
    loader = ShardLoader(shards, 200, 200, seed=0, shuffle=False, rank=0, world_size=1, epochs=1,
                         fields=PRETRAIN_FIELDS, pin_memory=False)
    with pytest.raises(ShardError, match=r"shard-00001\.h5: .* row\(s\) 40;"):
        list(loader.batches())


def test_divergence_stops_without_a_nan_checkpoint_or_metrics(toy_train, tmp_path):
    result = invoke(["pretrain", "--data", toy_train, "--out", tmp_path / "run", *PRETRAIN, "--lr", "1e30",
                     "--set", "clip_grad=0", "--set", "checkpoint_every=1"])
    assert result.exit_code == 1, result.output
    assert "the loss diverged" in result.output and "lower --lr" in result.output
    assert "Traceback" not in result.output and "linalg" not in result.output
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists()
    saved = load_checkpoint(run / "checkpoints" / "last.pt")  # written every step until the divergence
    assert all(torch.isfinite(t).all() for t in saved["model"].values())


def test_a_diverging_finetune_reports_nothing(toy_train, toy_val, toy_test, tmp_path):
    result = invoke(finetune_args(toy_train, toy_val, toy_test, tmp_path / "ft", "--lr", "1e30"))
    assert result.exit_code == 1, result.output
    assert "finetuning diverged" in result.output and "lower --lr" in result.output
    assert_nothing_trusted(tmp_path / "ft")


@pytest.mark.parametrize("lr", ["inf", "-1", "nan", "0"])
def test_a_bad_learning_rate_is_a_one_line_error(toy_train, tmp_path, lr):
    result = invoke(["pretrain", "--data", toy_train, "--out", tmp_path / "run", *PRETRAIN, "--lr", lr])
    assert result.exit_code == 1 and "lr must be positive and finite" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="lr must be positive"):
        resolve_pretrain_config({"steps": 1, "lr": lr})


def test_effective_rank_of_non_finite_representations_is_nan():
    reps = torch.randn(16, 8)
    reps[3, 2] = float("nan")
    assert np.isnan(effective_rank(reps)) and effective_rank(torch.randn(16, 8)) > 1


# --- case 4: resuming a finished run ------------------------------------------------------------------

def test_resume_of_a_finished_run_says_so_and_changes_nothing(toy_train, tmp_path, caplog):
    run = tmp_path / "run"
    args = ["pretrain", "--data", toy_train, "--out", run, *PRETRAIN]
    assert invoke(args).exit_code == 0
    files = ["metrics.json", "train_log.csv", "config.yaml", "checkpoints/last.pt"]
    before = {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in files}
    with caplog.at_level(logging.INFO):
        result = invoke([*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "is finished" in caplog.text and "Traceback" not in caplog.text
    assert json.loads(result.output.strip().splitlines()[-1]) == json.loads(before["metrics.json"][0])
    assert {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in files} == before


# --- case 5: shard sets checked before any step --------------------------------------------------------

def test_a_folder_mixing_shard_shapes_names_the_odd_shard(tmp_path):
    data = toy_folder(tmp_path / "data")
    other = toy_folder(tmp_path / "other", n_particles=N - 4, n_shards=1)
    shutil.copy(other / shard_name(0), data / shard_name(2))
    manifest = read_manifest(data)
    manifest.shards.append(read_manifest(other).shards[0])
    manifest.shards[-1].file = shard_name(2)
    write_manifest(data, manifest)
    result = invoke(["pretrain", "--data", data, "--out", tmp_path / "run", *PRETRAIN])
    assert result.exit_code == 1, result.output
    assert "shard-00002.h5" in result.output and f"N={N - 4}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_validation_shards_of_another_n_fail_before_training(toy_train, tmp_path):
    val = toy_folder(tmp_path / "val", n_particles=N - 4)
    result = invoke(["pretrain", "--data", toy_train, "--val", val, "--out", tmp_path / "run", *PRETRAIN])
    assert result.exit_code == 1, result.output
    assert "--val" in result.output and str(val) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_finetune_test_shards_of_another_n_fail_before_training(toy_train, toy_val, tmp_path):
    test = toy_folder(tmp_path / "test", n_particles=N - 4)
    result = invoke(finetune_args(toy_train, toy_val, test, tmp_path / "ft"))
    assert result.exit_code == 1, result.output
    assert "--test" in result.output and str(test) in result.output
    assert not (tmp_path / "ft").exists()


def test_a_checkpoint_of_another_n_fails_before_finetuning(toy_train, tmp_path):
    run = tmp_path / "pre"
    assert invoke(["pretrain", "--data", toy_train, "--out", run, *PRETRAIN, "--steps", "2"]).exit_code == 0
    other = [toy_folder(tmp_path / name, n_particles=N - 4, seed=seed) for name, seed in (("tr", 0), ("va", 1),
                                                                                          ("te", 2))]
    args = [a for a in finetune_args(*other, tmp_path / "ft") if a not in ("--preset", "tiny")]
    args[args.index("scratch")] = "freeze"
    result = invoke([*args, "--checkpoint", run / "checkpoints" / "last.pt"])
    assert result.exit_code == 1, result.output
    assert f"n_particles is {N} but the shards in {other[0]} have {N - 4}" in result.output
    assert not (tmp_path / "ft").exists()


# --- case 8: corrupted shards -----------------------------------------------------------------------

def flip_bytes(path, at_fraction=0.6, n=16):
    """Flip the lowest bit of ``n`` bytes in the data region: the values change but stay finite."""
    with open(path, "r+b") as f:
        f.seek(int(os.path.getsize(path) * at_fraction))
        chunk = bytearray(f.read(n))
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0x01 for b in chunk))


def test_flipped_bytes_are_caught_by_the_manifest_checksum(tmp_path):
    data = toy_folder(tmp_path / "data")
    flip_bytes(data / shard_name(1))
    result = invoke(["pretrain", "--data", data, "--out", tmp_path / "run", *PRETRAIN])
    assert result.exit_code == 1, result.output
    assert "shard-00001.h5: sha256" in result.output and "--no-verify-shards" in result.output
    actual, recorded = sha256_file(data / shard_name(1)), read_manifest(data).shards[1].sha256
    assert f"sha256 {actual[:16]}… differs from the manifest's {recorded[:16]}…" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
    # The option skips the check (the damage here is in finite data, so training runs).
    skipped = invoke(["pretrain", "--data", data, "--out", tmp_path / "run", *PRETRAIN, "--no-verify-shards"])
    assert skipped.exit_code == 0, skipped.output


def test_a_truncated_shard_is_an_error_naming_the_file_with_or_without_verification(tmp_path):
    data = toy_folder(tmp_path / "data")
    path = data / shard_name(0)
    os.truncate(path, os.path.getsize(path) // 2)
    for extra in ([], ["--no-verify-shards"]):
        result = invoke(["pretrain", "--data", data, "--out", tmp_path / "run", *PRETRAIN, *extra])
        assert result.exit_code == 1, result.output
        assert f"{path}:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_a_missing_shard_is_named(tmp_path):
    data = toy_folder(tmp_path / "data", n_shards=3)
    (data / shard_name(1)).unlink()
    with pytest.raises(ShardError, match=r"shard-00001\.h5: listed in .*manifest.json but missing"):
        ShardSet(data, verify=False)


def test_verified_shards_are_remembered_until_they_change(tmp_path, monkeypatch):
    data = toy_folder(tmp_path / "data", n_shards=3)
    calls = []
    real = integrity.sha256_files

    def counted(paths):
        paths = list(paths)
        calls.extend(paths)
        return real(paths)

    monkeypatch.setattr(integrity, "sha256_files", counted)
    ShardSet(data)
    assert len(calls) == 3
    ShardSet(data)
    assert len(calls) == 3, "unchanged shards were hashed again"
    path = data / shard_name(2)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    ShardSet(data)
    assert calls[3:] == [path]
    ShardSet(data, verify=False)
    assert len(calls) == 4


def test_an_unwritable_cache_only_costs_rehashing(tmp_path, monkeypatch):
    data = toy_folder(tmp_path / "data", n_shards=1)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(integrity.CACHE_ENV, str(blocker))
    assert integrity.verify_shards([data / shard_name(0)], [read_manifest(data).shards[0].sha256]) == 1


# --- case 9: a full disk at checkpoint time --------------------------------------------------------

class _FullDisk:
    """A file object whose writes fail with ENOSPC after ``room`` bytes, like a full file system."""

    def __init__(self, path, mode, room):
        self.file = open(path, mode)  # noqa: SIM115 - closed in __exit__
        self.room = room

    def write(self, data):
        size = len(memoryview(data).cast("B"))
        if size > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= size
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_at_checkpoint_time_keeps_the_previous_checkpoint(toy_train, tmp_path, monkeypatch):
    saves = {"n": 0}

    def fake_open(path, mode="r", *args, **kwargs):
        saves["n"] += 1
        return _FullDisk(path, mode, room=1 << 62 if saves["n"] == 1 else 10_000)

    monkeypatch.setattr(checkpoint_module, "open", fake_open, raising=False)
    run = tmp_path / "run"
    result = invoke(["pretrain", "--data", toy_train, "--out", run, *PRETRAIN, "--set", "checkpoint_every=4"])
    assert result.exit_code == 1, result.output
    assert f"no space left on device: {run / 'checkpoints' / 'last.pt'}" in result.output
    assert "Traceback" not in result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"], "a temporary file was left"
    assert not (run / "metrics.json").exists()


# --- case 11: smaller ones ---------------------------------------------------------------------------

def test_a_finetuning_checkpoint_given_as_the_pretrained_one_is_a_clear_error(toy_train, toy_val, toy_test,
                                                                               toy_tagger, tmp_path):
    best = toy_tagger / "checkpoints" / "best.pt"
    args = [a for a in finetune_args(toy_train, toy_val, toy_test, tmp_path / "ft") if a not in ("--preset", "tiny")]
    args[args.index("scratch")] = "finetune"
    result = invoke([*args, "--checkpoint", best])
    assert result.exit_code == 1, result.output
    assert f"{best}: this is a finetuning checkpoint" in result.output and "pretraining checkpoint" in result.output
    embedded = invoke(["embed", "--data", toy_val, "--checkpoint", best, "--out", tmp_path / "e.h5", "--no-progress"])
    assert embedded.exit_code == 1 and "this is a finetuning checkpoint" in embedded.output
    assert not (tmp_path / "ft" / "metrics.json").exists() and not (tmp_path / "e.h5").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(toy_train, tmp_path):
    args = [a if a != "cpu" else "cuda" for a in PRETRAIN]
    result = invoke(["pretrain", "--data", toy_train, "--out", tmp_path / "run", *args])
    assert result.exit_code == 1 and "torch sees no CUDA device" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_raw_input_file_given_for_shards_gets_the_command_that_makes_them(tmp_path):
    raw = tmp_path / "top.root"
    raw.write_bytes(b"root")
    result = invoke(["pretrain", "--data", raw, "--out", tmp_path / "run", *PRETRAIN])
    assert result.exit_code == 2
    assert "is a file, but this takes a folder of subjet shards" in result.output
    assert f"jjepa-preprocess cluster {raw} --out" in " ".join(result.output.split())


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(toy_train, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "build_state", interrupted)
    result = invoke(["pretrain", "--data", toy_train, "--out", tmp_path / "run", *PRETRAIN])
    assert result.exit_code == 1
    assert "interrupted before the first checkpoint: nothing to resume, rerun the same command" in result.output


def test_sigterm_saves_a_checkpoint_like_ctrl_c_and_the_run_resumes(toy_train, tmp_path, monkeypatch):
    real_forward = pretrain_module.jepa_forward
    calls = {"n": 0}

    def terminated(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # what a batch system sends before it kills the job
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "jepa_forward", terminated)
    before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    result = invoke(["pretrain", "--data", toy_train, "--out", run, *PRETRAIN])
    assert result.exit_code == 1 and "interrupted; the checkpoint is saved" in result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6, "the step under way is finished first"
    assert signal.getsignal(signal.SIGTERM) == before
    monkeypatch.setattr(pretrain_module, "jepa_forward", real_forward)
    config = resolve_pretrain_config({"data": str(toy_train), "out": str(run), "preset": "tiny", "steps": 12,
                                      "batch_size": 32, "device": "cpu", "log_every": 4, "prefetch": 2,
                                      "val_batches": 2})
    assert pretrain(config, resume=True, progress=False)["step"] == 12


def test_errors_are_jjepa_errors_for_the_api_too(tmp_path):
    data = toy_folder(tmp_path / "data", n_shards=1)
    flip_bytes(data / shard_name(0))
    with pytest.raises(JJepaError, match="sha256"):
        ShardSet(data)
