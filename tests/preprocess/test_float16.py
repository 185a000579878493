"""Disk-aware shards: float16 particles (half the particles' bytes, same jets) and the free-space check."""

from __future__ import annotations

import logging
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from jjepa.common.errors import JJepaError, ShardError
from jjepa.common.schema import ClusterConfig, ShardAttrs, bytes_per_jet, validate_shard
from jjepa.common.shards import open_memmaps, read_manifest, read_shard, write_shard
from jjepa.common.testing import toy_jets, write_toy_shards
from jjepa.preprocess.cli import main
from jjepa.preprocess.driver import ClusterRun, run_cluster
from jjepa.preprocess.inspect import summarize
from jjepa.preprocess.rawformats import write_jetclass_root
from jjepa.preprocess.testing import toy_chunk

N_JETS = 300


@pytest.fixture(scope="module")
def jetclass_file(tmp_path_factory):
    """300 jets of 5–60 massless constituents (labels QCD and Tbqq) in the JetClass ROOT layout."""
    chunk = toy_chunk(N_JETS, seed=7, labels=(8, 0, 0))
    path = tmp_path_factory.mktemp("raw") / "TTBar_000.root"
    write_jetclass_root(path, chunk)
    return path


def cluster_into(path, out, **kw):
    return run_cluster(ClusterRun(inputs=(str(path),), out=str(out), chunk_size=N_JETS, workers=0, progress=False,
                                  **kw))


def test_bytes_per_jet_of_the_default_shapes():
    assert bytes_per_jet(20, 30) == 10_612
    assert bytes_per_jet(20, 30, "float16") == 5_812
    with pytest.raises(ShardError, match="particle_dtype must be one of"):
        bytes_per_jet(20, 30, "bfloat16")


def test_float16_shards_hold_the_same_jets_in_half_the_particle_bytes(jetclass_file, tmp_path):
    cluster_into(jetclass_file, tmp_path / "f32")
    cluster_into(jetclass_file, tmp_path / "f16", particle_dtype="float16")
    a, b = (tmp_path / "f32" / "shard-00000.h5"), (tmp_path / "f16" / "shard-00000.h5")
    assert validate_shard(b, deep=True) == [] and validate_shard(a, deep=True) == []
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert fa.attrs["particle_dtype"] == "float32" and fb.attrs["particle_dtype"] == "float16"
    full, half = read_shard(a), read_shard(b)
    assert half.particles.dtype == np.float16
    np.testing.assert_array_equal(half.particles, full.particles.astype(np.float16))
    for name in ("particle_mask", "subjets", "subjet_mask", "subjet_nparticles", "jets", "labels"):
        np.testing.assert_array_equal(getattr(half, name), getattr(full, name))
    # Sizes: exactly the schema's bytes per jet, plus a few kB of HDF5 per file.
    size32, size16 = a.stat().st_size, b.stat().st_size
    particle_bytes = N_JETS * 20 * 30 * 4 * 4
    assert size32 - size16 == pytest.approx(particle_bytes / 2, abs=4096)
    assert 0 < size16 - N_JETS * bytes_per_jet(20, 30, "float16") < 16_384
    assert size16 / size32 == pytest.approx(5_812 / 10_612, abs=0.01)
    assert summarize(tmp_path / "f16", check=True)["problems"] == []
    assert read_manifest(tmp_path / "f16").plan["particle_dtype"] == "float16"


def test_memory_maps_and_loader_read_float16_as_float32(tmp_path):
    import torch
    from jjepa.train.data.loader import PRETRAIN_FIELDS, ShardLoader, ShardSet

    write_toy_shards(tmp_path / "f32", n_shards=2, jets_per_shard=30, n_subjets=6, n_particles=5, seed=0)
    write_toy_shards(tmp_path / "f16", n_shards=2, jets_per_shard=30, n_subjets=6, n_particles=5, seed=0,
                     particle_dtype="float16")
    assert open_memmaps(tmp_path / "f16" / "shard-00001.h5")["particles"].dtype == np.float16
    batches = {}
    for name in ("f32", "f16"):
        loader = ShardLoader(ShardSet(tmp_path / name), 60, 60, seed=0, shuffle=False, rank=0, world_size=1,
                             epochs=1, fields=PRETRAIN_FIELDS, pin_memory=False)
        batches[name] = next(loader.batches())
    assert batches["f16"]["particles"].dtype == torch.float32
    np.testing.assert_array_equal(batches["f16"]["particles"].numpy(),
                                  batches["f32"]["particles"].numpy().astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(batches["f16"]["subjets"].numpy(), batches["f32"]["subjets"].numpy())


def test_float16_overflow_is_an_error_not_inf(tmp_path):
    arrays = toy_jets(4, 0, 6, 5, seed=0)
    arrays.particles[2, 0, 0, 3] = 1e5  # a 100 TeV constituent: beyond float16's 65504
    attrs = ShardAttrs(cluster=ClusterConfig(n_subjets=6, n_particles=5), classes=("qcd", "top"),
                       particle_dtype="float16")
    with pytest.raises(ShardError, match=r"jet 2: particles values beyond the range of float16"):
        write_shard(tmp_path / "s.h5", arrays, attrs)
    assert not list(tmp_path.iterdir())


def test_resume_with_another_particle_dtype_is_refused(jetclass_file, tmp_path):
    cluster_into(jetclass_file, tmp_path / "s")
    with pytest.raises(JJepaError, match="--particle-dtype"):
        cluster_into(jetclass_file, tmp_path / "s", particle_dtype="float16", resume=True)


def test_cluster_logs_the_expected_size_and_refuses_a_disk_too_small(jetclass_file, tmp_path, monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="jjepa.preprocess.driver"):
        cluster_into(jetclass_file, tmp_path / "fits")
    assert any("expected output: 3.2 MB (300 jets x 10612 bytes" in r.getMessage() for r in caplog.records)

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=2_500_000))
    with pytest.raises(JJepaError, match=r"need about 3\.2 MB .* only 2\.5 MB are free .*--particle-dtype float16"):
        cluster_into(jetclass_file, tmp_path / "full")
    assert not list((tmp_path / "full").glob("*"))  # nothing written, not even a manifest
    result = CliRunner().invoke(main, ["cluster", str(jetclass_file), "--out", str(tmp_path / "cli"), "--workers",
                                       "0", "--no-progress"])
    assert result.exit_code == 1 and "are free there" in result.output and "Traceback" not in result.output
    cluster_into(jetclass_file, tmp_path / "half", particle_dtype="float16")  # 1.7 MB fits
    assert read_manifest(tmp_path / "half").n_jets == N_JETS


def test_cli_writes_float16_shards(jetclass_file, tmp_path):
    result = CliRunner().invoke(main, ["cluster", str(jetclass_file), "--out", str(tmp_path / "s"), "--workers", "0",
                                       "--no-progress", "--particle-dtype", "float16", "--chunk-size", "100"])
    assert result.exit_code == 0, result.output
    assert all(open_memmaps(tmp_path / "s" / r.file)["particles"].dtype == np.float16
               for r in read_manifest(tmp_path / "s").shards)
