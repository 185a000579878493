"""``cluster`` and ``inspect`` on hostile input: option ranges, changed inputs on --resume, a full disk,
malformed --branches YAML, and shard folders that mix clusterings. Each stops with one line naming the
file, exits non-zero, and leaves nothing a later step would trust."""

from __future__ import annotations

import errno
import json
import os
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from jjepa.common.atomic import sha256_file
from jjepa.common.errors import InputError, JJepaError
from jjepa.common.schema import validate_shard
from jjepa.common.shards import read_manifest, read_shard
from jjepa.preprocess import driver, fingerprint
from jjepa.preprocess.branches import load_branches
from jjepa.preprocess.cli import main
from jjepa.preprocess.driver import ClusterRun, run_cluster
from jjepa.preprocess.rawformats import write_jetclass_root, write_toptagging_h5
from jjepa.preprocess.readers.base import JetChunk
from jjepa.preprocess.testing import toy_chunk as make_toy_chunk


def toy_chunk(n_jets: int, seed: int = 0, labels=(0, 8)) -> JetChunk:
    """Jets of 5–40 massless constituents around a random axis; labels alternate over ``labels``."""
    return make_toy_chunk(n_jets, seed, labels, constituents=(5, 41))


@pytest.fixture
def jetclass_file(tmp_path):
    path = tmp_path / "in" / "TTBar_000.root"
    path.parent.mkdir()
    write_jetclass_root(path, toy_chunk(120))
    return path


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def cluster(inputs, out, *options):
    return cli("cluster", *inputs, "--out", out, "--workers", "0", "--chunk-size", "50", "--no-progress", *options)


def one_line_error(result, *needles) -> None:
    """Exit status 1, a single ``Error:`` line holding every needle, and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def folder_state(out) -> dict:
    """Every file in ``out`` with its bytes: to show that a refused command changed nothing."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# ---------------------------------------------------------------------------------------- option ranges

@pytest.mark.parametrize("option", [("--workers", "-1"), ("--max-jets", "-1"), ("--max-jets", "0"),
                                    ("--chunk-size", "0"), ("--n-subjets", "0"), ("--n-particles", "-3"),
                                    ("--radius", "0")])
def test_out_of_range_options_are_usage_errors_before_any_work(jetclass_file, tmp_path, option):
    out = tmp_path / "shards"
    result = cli("cluster", jetclass_file, "--out", out, "--no-progress", *option)
    assert result.exit_code == 2 and f"Invalid value for '{option[0]}'" in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize(("field", "value", "message"), [("workers", -1, "workers must be 0"),
                                                          ("max_jets", 0, "max_jets must be at least 1"),
                                                          ("chunk_size", 0, "chunk size must be at least 1")])
def test_cluster_run_refuses_out_of_range_values(tmp_path, field, value, message):
    with pytest.raises(JJepaError, match=message):
        ClusterRun(inputs=("x.root",), out=str(tmp_path), **{field: value})


def test_max_jets_takes_that_many_jets(jetclass_file, tmp_path):
    assert cluster([jetclass_file], tmp_path / "o", "--max-jets", "70").exit_code == 0
    assert read_manifest(tmp_path / "o").n_jets == 70


# ---------------------------------------------------------------------------------- --resume fingerprints

def test_resume_refuses_an_input_whose_content_changed_and_names_it(jetclass_file, tmp_path):
    out = tmp_path / "shards"
    assert cluster([jetclass_file], out).exit_code == 0
    (out / "shard-00001.h5").unlink()  # as if interrupted: one shard to redo
    before = folder_state(out)
    write_jetclass_root(jetclass_file, toy_chunk(120, seed=9))  # same name, other jets
    result = cluster([jetclass_file], out, "--resume")
    one_line_error(result, f"input 1, {jetclass_file}, is not the file its shards were made from",
                   "resuming would mix old and new jets")
    assert folder_state(out) == before  # nothing written, nothing deleted


def test_resume_accepts_the_same_files_by_another_path(jetclass_file, tmp_path):
    reference = tmp_path / "reference"
    assert cluster([jetclass_file], reference).exit_code == 0
    out = tmp_path / "shards"
    assert cluster([jetclass_file], out).exit_code == 0
    (out / "shard-00002.h5").unlink()
    kept = (out / "shard-00000.h5").stat().st_mtime_ns
    moved = tmp_path / "scratch" / "copy.root"  # a copy elsewhere: other path, other mtime, same bytes
    moved.parent.mkdir()
    shutil.copy(jetclass_file, moved)
    link = tmp_path / "link.root"
    link.symlink_to(jetclass_file)
    for given in (moved, link):
        result = cluster([given], out, "--resume")
        assert result.exit_code == 0, result.output
    assert (out / "shard-00000.h5").stat().st_mtime_ns == kept  # finished shards were not redone
    assert [s.file for s in read_manifest(out).shards] == [s.file for s in read_manifest(reference).shards]
    for record in read_manifest(out).shards:  # the same jets (the source attribute names the path read)
        got, want = read_shard(out / record.file), read_shard(reference / record.file)
        for name in ("particles", "particle_mask", "subjets", "jets", "labels"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    recorded = read_manifest(out).plan["inputs"]
    assert recorded[0]["path"] == str(jetclass_file.resolve())  # the link resolves to the original


def test_resume_of_unchanged_inputs_does_not_hash_them_again(jetclass_file, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    assert cluster([jetclass_file], out).exit_code == 0
    fp = read_manifest(out).plan["inputs"][0]
    assert fp["size"] == jetclass_file.stat().st_size and len(fp["sha256"]) == 64

    def no_hashing(paths):
        raise AssertionError(f"{list(paths)} was hashed again")

    monkeypatch.setattr(fingerprint, "sha256_files", no_hashing)
    (out / "shard-00001.h5").unlink()
    assert cluster([jetclass_file], out, "--resume").exit_code == 0
    assert len(read_manifest(out).shards) == 3
    os.utime(jetclass_file, ns=(fp["mtime_ns"] + 10**9, fp["mtime_ns"] + 10**9))  # touched: hash again
    result = cluster([jetclass_file], out, "--resume")
    assert isinstance(result.exception, AssertionError) and "hashed again" in str(result.exception)


def test_resume_with_other_inputs_or_options_says_what_differs(jetclass_file, tmp_path):
    out = tmp_path / "shards"
    assert cluster([jetclass_file], out).exit_code == 0
    before = folder_state(out)
    other = tmp_path / "in" / "ZJetsToNuNu_000.root"
    write_jetclass_root(other, toy_chunk(30, seed=4))
    one_line_error(cluster([jetclass_file, other], out, "--resume"), "made from 1 input file(s), 2 given now")
    one_line_error(cluster([jetclass_file], out, "--resume", "--on-bad-jet", "skip"), "--on-bad-jet")
    one_line_error(cluster([jetclass_file], out, "--resume", "--n-particles", "10"), "clustering differs")
    assert folder_state(out) == before


# ------------------------------------------------------------------------------------------- disk full

#: What h5py raises on a full disk: OSError(28) from a write, RuntimeError with HDF5's words from a close.
FULL_DISK_ERRORS = {
    "write": OSError(errno.ENOSPC, "No space left on device"),
    "close": RuntimeError("Can't decrement id ref count (file write failed: time = ..., filename = '...', "
                          "file descriptor = 16, errno = 28, error message = 'No space left on device', ...)"),
}


def fail_writes_to(monkeypatch, shard: str, error: Exception) -> None:
    """Make HDF5 writes into ``shard`` (its temporary file) fail with ``error``, as on a full disk."""
    real = h5py.Dataset.__setitem__

    def setitem(self, key, value):
        if f".{shard}." in self.file.filename:
            raise error
        return real(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)


@pytest.mark.parametrize("where", sorted(FULL_DISK_ERRORS))
def test_full_disk_is_one_line_keeps_complete_shards_and_resume_finishes(jetclass_file, tmp_path, monkeypatch, where):
    reference = tmp_path / "reference"
    assert cluster([jetclass_file], reference).exit_code == 0
    out = tmp_path / "shards"
    with monkeypatch.context() as patch:
        fail_writes_to(patch, "shard-00001.h5", FULL_DISK_ERRORS[where])
        result = cluster([jetclass_file], out)
    one_line_error(result, f"no space left on device: {out / 'shard-00001.h5'}", "--resume")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5"]  # no partial file
    assert [s.file for s in read_manifest(out).shards] == ["shard-00000.h5"]
    assert not validate_shard(out / "shard-00000.h5", deep=True)
    result = cluster([jetclass_file], out, "--resume")
    assert result.exit_code == 0, result.output
    assert [(s.file, s.sha256) for s in read_manifest(out).shards] == \
           [(s.file, s.sha256) for s in read_manifest(reference).shards]


def test_full_disk_while_writing_the_manifest(jetclass_file, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    real, calls = driver.write_manifest, []

    def write_manifest(folder, manifest):
        calls.append(len(manifest.shards))
        if len(calls) == 3:  # the initial manifest, shard 0 recorded, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(folder, manifest)

    with monkeypatch.context() as patch:
        patch.setattr(driver, "write_manifest", write_manifest)
        result = cluster([jetclass_file], out)
    one_line_error(result, f"no space left on device: {out / 'manifest.json'}")
    assert [s.file for s in read_manifest(out).shards] == ["shard-00000.h5"]  # the last good manifest
    assert not list(out.glob(".*.tmp"))
    assert cluster([jetclass_file], out, "--resume").exit_code == 0
    assert read_manifest(out).n_jets == 120


# --------------------------------------------------------------------------------------- --branches YAML

@pytest.mark.parametrize(("text", "message"), [
    ("px: [pf_px\npy: pf_py\n", "not valid YAML at line 2, column 3"),
    ("px: a: b\n", "not valid YAML at line 1, column 6: mapping values are not allowed here"),
    ("- px\n- py\n", "expected a mapping of keys to branch names"),
    ("px: [a, b]\n", "'px' must be one branch/dataset name (a string), not ['a', 'b']"),
    ("px: 3\n", "'px' must be one branch/dataset name (a string), not 3 (quote it)"),
    ("classes: {QCD: 0}\n", "'classes' must be a list of names or a comma-separated string"),
    ("momentum: pf_p\n", "unknown keys ['momentum']"),
    (b"\xff\xfe\x00binary", "not a text (YAML) file"),
])
def test_malformed_branches_yaml_is_one_line_naming_the_file(jetclass_file, tmp_path, text, message):
    branches = tmp_path / "branches.yaml"
    branches.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "shards"
    result = cluster([jetclass_file], out, "--format", "generic", "--branches", branches)
    one_line_error(result, f"{branches}: ", message)
    assert not out.exists()


def test_branches_yaml_classes_as_list_or_string(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("px: pf_px\nclasses: [QCD, top]\n")
    assert load_branches(path) == {"px": "pf_px", "classes": ("QCD", "top")}
    path.write_text("classes: QCD, top\n")
    assert load_branches(path) == {"classes": ("QCD", "top")}
    path.write_text("")
    assert load_branches(path) == {}


# ---------------------------------------------------------------------------------- mixed shard folders

def test_inspect_reports_a_folder_mixing_n_classes_and_schema(jetclass_file, tmp_path):
    out, other_n, top = tmp_path / "shards", tmp_path / "n10", tmp_path / "top"
    assert cluster([jetclass_file], out).exit_code == 0
    assert cluster([jetclass_file], other_n, "--n-particles", "10").exit_code == 0
    top_file = tmp_path / "top.h5"
    write_toptagging_h5(top_file, toy_chunk(40, labels=(0, 1)))
    assert cluster([top_file], top).exit_code == 0
    result = cli("inspect", "--check", out)
    assert result.exit_code == 0 and result.output.rstrip().endswith("ok"), result.output

    # swap in shards of other runs, with the manifest's sha256 updated so only the layout is wrong
    manifest = json.loads((out / "manifest.json").read_text())
    for index, source in ((1, other_n / "shard-00001.h5"), (2, top / "shard-00000.h5")):
        shutil.copy(source, out / f"shard-0000{index}.h5")
    with h5py.File(out / "shard-00000.h5", "r+") as f:
        f.attrs["schema_version"] = 2

    for record in manifest["shards"]:
        record["sha256"] = sha256_file(out / record["file"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = cli("inspect", "--check", out)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("PROBLEM")]
    assert any("shard-00000.h5: schema_version is 2 but the manifest says 1" in p for p in problems), problems
    assert any("shard-00001.h5: n_particles is 10 but the manifest says 30" in p for p in problems), problems
    assert any("shard-00002.h5: classes is ['QCD', 'top'] but the manifest says ['QCD', 'Hbb'" in p
               for p in problems), problems
    assert any("shard-00002.h5: holds 40 jets but the manifest says 20" in p for p in problems), problems
    assert not result.output.rstrip().endswith("ok")


def test_bad_jet_on_a_dask_worker_is_the_same_error(tmp_path):
    chunk = toy_chunk(120, seed=5)
    chunk.energy[chunk.offsets[77]] = np.nan
    path = tmp_path / "bad.root"
    write_jetclass_root(path, chunk)
    out = tmp_path / "shards"
    with pytest.raises(InputError, match="non-finite") as err:
        run_cluster(ClusterRun(inputs=(str(path),), out=str(out), chunk_size=50, workers=1, progress=False))
    assert err.value.entry == 77 and err.value.path == str(path)
    assert [s.file for s in read_manifest(out).shards] == ["shard-00000.h5", "shard-00002.h5"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.h5", "shard-00002.h5"]


def test_resume_of_a_manifest_without_fingerprints_goes_by_path_and_adds_them(jetclass_file, tmp_path):
    out = tmp_path / "shards"
    assert cluster([jetclass_file], out).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    given = str(jetclass_file)
    manifest["plan"] = {"inputs": [given], "chunks": [[given, 0, 50], [given, 50, 100], [given, 100, 120]],
                        "format": "auto", "options": manifest["plan"]["options"], "backend": "numba",
                        "on_bad_jet": "error"}  # as written before input fingerprints
    manifest["shards"] = manifest["shards"][:2]
    (out / "manifest.json").write_text(json.dumps(manifest))
    link = tmp_path / "link.root"
    link.symlink_to(jetclass_file)
    one_line_error(cluster([link], out, "--resume"), "--resume needs the same inputs")  # by path, as then
    assert cluster([jetclass_file], out, "--resume").exit_code == 0
    plan = read_manifest(out).plan
    assert plan["version"] == 2 and plan["inputs"][0]["path"] == str(jetclass_file.resolve())
    assert read_manifest(out).n_jets == 120


# ------------------------------------------------------------------------- inputs given twice, stale output

def test_an_input_given_twice_by_any_path_is_refused_naming_both(jetclass_file, tmp_path):
    link = tmp_path / "link.root"
    link.symlink_to(jetclass_file)
    copy = tmp_path / "copy.root"
    shutil.copy(jetclass_file, copy)
    out = tmp_path / "shards"
    for second, what in ((jetclass_file, "the same file as"), (link, "the same file as"),
                         (copy, "a byte-identical copy of")):
        one_line_error(cluster([jetclass_file, second], out), f"{second}: input 2 is {what} input 1, "
                       f"{jetclass_file}", "clustered twice")
        assert not list(out.glob("shard-*.h5"))
    assert cluster([jetclass_file], out).exit_code == 0
    before = folder_state(out)
    one_line_error(cluster([jetclass_file, copy], out, "--force"), "byte-identical copy")
    assert folder_state(out) == before  # refused before --force deleted anything


def test_shards_without_a_manifest_are_refused_unless_forced(jetclass_file, tmp_path):
    out = tmp_path / "shards"
    assert cluster([jetclass_file], out, "--chunk-size", "10").exit_code == 0  # 12 shards
    (out / "manifest.json").unlink()
    before = folder_state(out)
    one_line_error(cluster([jetclass_file], out), f"{out} holds 12 shard file(s) (shard-00000.h5 to "
                   "shard-00011.h5) but no manifest.json", "--force")
    assert folder_state(out) == before
    assert cluster([jetclass_file], out, "--force").exit_code == 0
    assert sorted(p.name for p in out.glob("shard-*.h5")) == [s.file for s in read_manifest(out).shards]
    assert len(read_manifest(out).shards) == 3


# ------------------------------------------------------------------------------------ runs that write no jet

GENERIC = ("--format", "generic", "--px", "px", "--py", "py", "--pz", "pz", "--energy", "e")


def test_inputs_without_jets_are_an_error_before_any_work(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        for name in ("px", "py", "pz", "e"):
            f[name] = np.zeros((0, 10))
    out = tmp_path / "shards"
    one_line_error(cluster([path], out, *GENERIC), "no jets to cluster", f"{path} hold 0 jets")
    assert not out.exists()


def test_a_run_that_skips_every_jet_is_an_error(tmp_path):
    path = tmp_path / "allbad.h5"
    with h5py.File(path, "w") as f:
        for name in ("px", "py", "pz"):
            f[name] = np.ones((60, 4))
        f["e"] = -np.ones((60, 4))  # every jet has negative energies
    out = tmp_path / "shards"
    one_line_error(cluster([path], out, *GENERIC, "--on-bad-jet", "skip"), "no jets written",
                   "all 60 jet(s) read were skipped as bad", "--on-bad-jet error")
