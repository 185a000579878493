"""The cluster stage end to end: shards, manifest, resume after a crash, bad input, Dask workers."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from jjepa.common.atomic import sha256_file
from jjepa.common.errors import InputError, JJepaError
from jjepa.common.schema import ClusterConfig, validate_shard
from jjepa.common.shards import read_manifest, read_shard
from jjepa.preprocess import driver
from jjepa.preprocess.cli import main
from jjepa.preprocess.cluster import cluster
from jjepa.preprocess.driver import ClusterRun, run_cluster
from jjepa.preprocess.features import build_features
from jjepa.preprocess.rawformats import write_jetclass_root
from jjepa.preprocess.readers.base import JetChunk
from jjepa.preprocess.testing import toy_chunk as make_toy_chunk


def toy_chunk(n_jets: int, seed: int = 0) -> JetChunk:
    """Jets of 5–60 massless constituents around a random axis, every third Tbqq (8), the others QCD (0)."""
    return make_toy_chunk(n_jets, seed, labels=(8, 0, 0))


@pytest.fixture
def jetclass_file(tmp_path):
    path = tmp_path / "TTBar_000.root"
    write_jetclass_root(path, toy_chunk(230))
    return path


def run(inputs, out, **kw) -> ClusterRun:
    kw.setdefault("chunk_size", 50)
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return ClusterRun(inputs=tuple(str(p) for p in inputs), out=str(out), **kw)


def test_cluster_writes_valid_shards_and_manifest(jetclass_file, tmp_path):
    out = tmp_path / "shards"
    manifest = run_cluster(run([jetclass_file], out))
    assert [s.file for s in manifest.shards] == [f"shard-{i:05d}.h5" for i in range(5)]
    assert [s.n_jets for s in manifest.shards] == [50, 50, 50, 50, 30]
    assert [s.source["start"] for s in manifest.shards] == [0, 50, 100, 150, 200]
    on_disk = read_manifest(out)
    assert on_disk.n_jets == 230 and on_disk.classes[8] == "Tbqq"
    assert sum(np.array(s.class_counts) for s in on_disk.shards).tolist() == [153, 0, 0, 0, 0, 0, 0, 0, 77, 0]
    for record in on_disk.shards:
        assert validate_shard(out / record.file, deep=True) == []
        assert sha256_file(out / record.file) == record.sha256
    # shard contents equal clustering the (float32-stored) jets directly
    second = read_shard(out / "shard-00001.h5")
    from jjepa.preprocess.readers import read_chunk

    chunk = read_chunk("jetclass", str(jetclass_file), 50, 100, None)
    assign, n_subjets = cluster(chunk.px, chunk.py, chunk.pz, chunk.energy, chunk.offsets)
    direct = build_features(chunk.px, chunk.py, chunk.pz, chunk.energy, chunk.offsets, assign, n_subjets,
                            chunk.labels, ClusterConfig())
    np.testing.assert_array_equal(second.particles, direct.particles)
    np.testing.assert_array_equal(second.labels, direct.labels)
    with h5py.File(out / "shard-00001.h5") as f:
        assert json.loads(f.attrs["source"]) == {"file": str(jetclass_file), "start": 50, "stop": 100}


def test_interrupted_run_keeps_only_complete_shards_and_resume_finishes(jetclass_file, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    reference = run_cluster(run([jetclass_file], tmp_path / "reference"))

    real_run_task = driver.run_task
    calls = []

    def crash_on_third(task):
        calls.append(task.index)
        if len(calls) == 3:
            (out / ".shard-00002.h5.999.tmp").write_bytes(b"half a shard")  # what a killed worker leaves
            raise KeyboardInterrupt
        return real_run_task(task)

    monkeypatch.setattr(driver, "run_task", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_cluster(run([jetclass_file], out))
    assert [s.file for s in read_manifest(out).shards] == ["shard-00000.h5", "shard-00001.h5"]
    assert sorted(p.name for p in out.glob("shard-*.h5")) == ["shard-00000.h5", "shard-00001.h5"]

    monkeypatch.setattr(driver, "run_task", real_run_task)
    with pytest.raises(JJepaError, match="--resume"):
        run_cluster(run([jetclass_file], out))
    mtime = os.stat(out / "shard-00000.h5").st_mtime_ns
    (out / "shard-00001.h5").write_bytes(b"damaged")
    finished = run_cluster(run([jetclass_file], out, resume=True))
    assert os.stat(out / "shard-00000.h5").st_mtime_ns == mtime  # intact shard not redone
    assert not list(out.glob("*.tmp"))
    assert [(s.file, s.sha256) for s in finished.shards] == [(s.file, s.sha256) for s in reference.shards]


def test_resume_refuses_a_different_configuration(jetclass_file, tmp_path):
    out = tmp_path / "shards"
    run_cluster(run([jetclass_file], out))
    with pytest.raises(JJepaError, match="same inputs"):
        run_cluster(run([jetclass_file], out, resume=True, chunk_size=70))
    assert run_cluster(run([jetclass_file], out, force=True, chunk_size=70)).n_jets == 230


def write_with_bad_jet(path, entry: int, what: str):
    chunk = toy_chunk(120, seed=5)
    lo = chunk.offsets[entry]
    if what == "nan":
        chunk.energy[lo + 1] = np.nan
    elif what == "negative":
        chunk.energy[lo] = -1.0
    write_jetclass_root(path, chunk)


@pytest.mark.parametrize(("what", "message"), [("nan", "non-finite"), ("negative", "negative energy")])
def test_bad_jet_is_an_error_naming_file_and_entry(tmp_path, what, message):
    path = tmp_path / "bad.root"
    write_with_bad_jet(path, entry=77, what=what)
    out = tmp_path / "shards"
    with pytest.raises(InputError, match=message) as err:
        run_cluster(run([path], out))
    assert err.value.entry == 77 and err.value.path == str(path)
    # the chunk holding entry 77 (50-99) has no shard and no manifest entry; the others do
    assert [s.file for s in read_manifest(out).shards] == ["shard-00000.h5", "shard-00002.h5"]
    assert not (out / "shard-00001.h5").exists()


def test_bad_jets_can_be_skipped_and_are_counted(tmp_path):
    path = tmp_path / "bad.root"
    write_with_bad_jet(path, entry=77, what="nan")
    manifest = run_cluster(run([path], tmp_path / "shards", on_bad_jet="skip"))
    assert manifest.n_jets == 119
    assert [s.n_skipped for s in manifest.shards] == [0, 1, 0]


def test_cli_reports_missing_file_and_exits_nonzero(tmp_path):
    result = CliRunner().invoke(main, ["cluster", str(tmp_path / "nope.root"), "--out", str(tmp_path / "o"),
                                       "--workers", "0", "--no-progress"])
    assert result.exit_code != 0
    assert "nope.root" in result.output and "no such file" in result.output


def test_cli_cluster_then_inspect(jetclass_file, tmp_path):
    out = tmp_path / "shards"
    runner = CliRunner()
    result = runner.invoke(main, ["cluster", str(jetclass_file), "--out", str(out), "--workers", "0",
                                  "--chunk-size", "100", "--no-progress", "--n-subjets", "10"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["inspect", str(out), "--check", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_jets"] == 230 and summary["n_shards"] == 3 and summary["problems"] == []
    assert summary["classes"]["QCD"] == 153 and summary["cluster"]["n_subjets"] == 10
    (out / "shard-00001.h5").write_bytes(b"x")
    result = runner.invoke(main, ["inspect", str(out), "--check"])
    assert result.exit_code == 1 and "shard-00001.h5" in result.output


@pytest.mark.slow
def test_two_dask_workers_write_the_same_shards_as_one_process(jetclass_file, tmp_path):
    serial = run_cluster(run([jetclass_file], tmp_path / "serial"))
    parallel = run_cluster(run([jetclass_file], tmp_path / "dask", workers=2))
    assert [(s.file, s.sha256) for s in parallel.shards] == [(s.file, s.sha256) for s in serial.shards]


@pytest.mark.slow
def test_an_existing_scheduler_does_the_work(jetclass_file, tmp_path):
    from distributed import LocalCluster

    serial = run_cluster(run([jetclass_file], tmp_path / "serial"))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = run_cluster(run([jetclass_file], tmp_path / "remote", scheduler=cluster.scheduler_address))
    assert [s.sha256 for s in remote.shards] == [s.sha256 for s in serial.shards]


@pytest.mark.slow
def test_killed_process_leaves_only_complete_shards(tmp_path):
    """SIGKILL in the middle of a run: every shard on disk is whole, and --resume finishes the job."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "big.root"
    write_jetclass_root(path, toy_chunk(3000, seed=9))
    out = tmp_path / "shards"
    command = [sys.executable, "-m", "jjepa.preprocess", "cluster", str(path), "--out", str(out), "--workers", "0",
               "--chunk-size", "100", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        manifest = out / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    listed = {s.file: s.sha256 for s in read_manifest(out).shards}
    assert process.returncode == -signal.SIGKILL and 2 <= len(listed) < 30, "killed in the middle of the run"
    for shard in out.glob("shard-*.h5"):  # also shards renamed just before the manifest was rewritten
        assert validate_shard(shard, deep=True) == []
        if shard.name in listed:
            assert sha256_file(shard) == listed[shard.name]
    result = CliRunner().invoke(main, command[3:] + ["--resume"])
    assert result.exit_code == 0, result.output
    final = read_manifest(out)
    assert final.n_jets == 3000 and len(final.shards) == 30
    assert not list(out.glob("*.tmp"))


def test_dataset_options_without_dataset_are_refused(tmp_path):
    result = CliRunner().invoke(main, ["cluster", str(tmp_path / "x.root"), "--split", "val", "--max-files", "2",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--split, --max-files given without --dataset" in result.output
    assert not (tmp_path / "o").exists()


def test_generic_reader_options_on_another_layout_are_refused(jetclass_file, tmp_path):
    result = CliRunner().invoke(main, ["cluster", str(jetclass_file), "--classes", "QCD,top", "--out",
                                       str(tmp_path / "o"), "--workers", "0", "--no-progress"])
    assert result.exit_code == 1
    assert "is read as jetclass, which has its own branch names and classes, but ['--classes']" in result.output
    assert not (tmp_path / "o").exists()
