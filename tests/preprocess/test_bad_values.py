"""One rule for bad constituent values in every reader: NaN, inf or negative values are bad jets, never padding.

Each case writes a small file in a real layout (JetClass ROOT, Top Tagging table/Blosc HDF5, generic
HDF5 and ROOT, quark-gluon npz) with one bad constituent in entry 13, and runs ``cluster``: by default
it stops naming the file and the entry, and writes no shard for that chunk; ``--on-bad-jet skip``
drops that jet alone, counts it, and leaves every other jet exactly as in a clean file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import uproot
from click.testing import CliRunner
from jjepa.common.shards import read_manifest, read_shard
from jjepa.preprocess.cli import main
from jjepa.preprocess.rawformats import write_jetclass_root
from jjepa.preprocess.readers.base import JetChunk
from jjepa.preprocess.readers.toptagging import EXPECTED_COLUMNS, INT_COLUMNS, N_CONSTITUENTS

N_JETS, M, BAD = 40, 48, 13  # jets, padded slots, the entry holding the bad value
GENERIC = ["--label", "label", "--classes", "QCD,top"]


def polar_jets(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """float64 (J, M, 3) (pT [GeV], η, φ) of 5–40 constituents per jet, zero-padded; labels (J,) 0/1."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 41, N_JETS)
    real = np.arange(M) < counts[:, None]
    jets = np.zeros((N_JETS, M, 3))
    jets[..., 0][real] = -np.sort(-(rng.exponential(15, (N_JETS, M)) + 1), axis=1)[real]
    jets[..., 1][real] = (rng.normal(0, 0.2, (N_JETS, M)) + rng.uniform(-1, 1, (N_JETS, 1)))[real]
    jets[..., 2][real] = (rng.normal(0, 0.2, (N_JETS, M)) + rng.uniform(-3, 3, (N_JETS, 1)))[real]
    return jets, np.arange(N_JETS) % 2


def cartesian(jets: np.ndarray) -> np.ndarray:
    """float64 (J, M, 4) (px, py, pz, E) [GeV] of massless constituents; zeros stay zeros."""
    pt, eta, phi = jets[..., 0], jets[..., 1], jets[..., 2]
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], axis=-1)


def inject(p4: np.ndarray, what: str) -> None:
    """Put one bad value into entry ``BAD`` of (J, M, 4) cartesian or polar arrays (last axis: E or PDG id)."""
    if what == "nan_energy":
        p4[BAD, 0, 3] = np.nan
    elif what == "negative_energy":
        p4[BAD, 1, 3] = -p4[BAD, 1, 3]
    elif what == "nan_padding":  # a NaN in a slot that is otherwise padding
        p4[BAD, M - 1, 3] = np.nan
    elif what == "negative_pt":
        p4[BAD, 1, 0] = -p4[BAD, 1, 0]
    elif what == "zero_energy":  # E = 0 next to a non-zero momentum: was taken for padding
        p4[BAD, 1, 3] = 0.0
    elif what == "nan_pt":
        p4[BAD, 0, 0] = np.nan
    elif what == "back_to_back":  # two constituents whose momenta cancel: the jet has zero pT, no axis
        p4[BAD] = 0.0
        p4[BAD, :2] = [[50.0, 0.0, 0.0, 50.0], [-50.0, 0.0, 0.0, 50.0]]
    elif what == "beyond_float32":  # finite in float64, inf once stored as float32
        p4[BAD, 0] = [1e39, 0.0, 0.0, 1e39]
    elif what != "clean":
        raise ValueError(what)


def as_chunk(p4: np.ndarray, labels: np.ndarray) -> JetChunk:
    """The non-padding (not all-zero) slots of (J, M, 4) (px, py, pz, E) as a JetChunk."""
    real = (p4 != 0).any(axis=2)
    flat = p4[real]
    offsets = np.concatenate([[0], np.cumsum(real.sum(axis=1))]).astype(np.int64)
    return JetChunk(px=flat[:, 0], py=flat[:, 1], pz=flat[:, 2], energy=flat[:, 3], offsets=offsets,
                    labels=np.asarray(labels, np.int64), path="toy", start=0, stop=len(labels))


def write_toptagging(path, p4: np.ndarray, labels: np.ndarray) -> None:
    """The Top Tagging layout (pandas table, Blosc) from (J, M, 4) (px, py, pz, E), slots kept as they are."""
    block = np.zeros((len(p4), N_CONSTITUENTS, 4), np.float32)
    block[:, :M] = p4[..., [3, 0, 1, 2]]  # E, PX, PY, PZ
    values = np.concatenate([block.reshape(len(p4), -1), np.zeros((len(p4), 4), np.float32)], axis=1)
    frame = pd.concat([pd.DataFrame(values, columns=EXPECTED_COLUMNS),
                       pd.DataFrame({INT_COLUMNS[0]: np.zeros(len(p4), np.int64),
                                     INT_COLUMNS[1]: labels.astype(np.int64)})], axis=1)
    frame.to_hdf(path, key="table", format="table", complib="blosc", complevel=5)


def write_file(tmp_path, kind: str, what: str):
    """Write the toy jets in layout ``kind`` with ``what`` injected; return (path, extra CLI options)."""
    jets, labels = polar_jets()
    p4 = cartesian(jets)
    if kind == "jetclass":
        inject(p4, what)
        path = tmp_path / f"TTBar_{what}.root"
        write_jetclass_root(path, as_chunk(p4, np.where(labels == 1, 8, 0)))
        return path, []
    if kind == "toptagging":
        inject(p4, what)
        path = tmp_path / f"top_{what}.h5"
        write_toptagging(path, p4, labels)
        return path, []
    if kind == "generic_h5":
        inject(p4, what)
        path = tmp_path / f"generic_{what}.h5"
        import h5py

        with h5py.File(path, "w") as f:
            for i, name in enumerate(("px", "py", "pz", "e")):
                f[name] = p4[..., i]
            f["label"] = labels
        return path, ["--format", "generic", "--px", "px", "--py", "py", "--pz", "pz", "--energy", "e", *GENERIC]
    if kind == "generic_h5_polar":
        polar = np.concatenate([jets, p4[..., 3:]], axis=-1)  # pT, η, φ, E
        inject(polar, what)
        path = tmp_path / f"polar_{what}.h5"
        import h5py

        with h5py.File(path, "w") as f:
            for i, name in enumerate(("pt", "eta", "phi", "e")):
                f[name] = polar[..., i]
            f["label"] = labels
        return path, ["--format", "generic", "--pt", "pt", "--eta", "eta", "--phi", "phi", "--energy", "e", *GENERIC]
    if kind == "generic_root_fixed":
        inject(p4, what)
        path = tmp_path / f"fixed_{what}.root"
        branches = {name: p4[..., i].astype(np.float32) for i, name in enumerate(("px", "py", "pz", "e"))}
        branches["label"] = labels.astype(np.int32)
        with uproot.recreate(path) as f:
            f.mktree("Events", {k: np.dtype((v.dtype, v.shape[1:])) if v.ndim == 2 else v.dtype
                                for k, v in branches.items()}).extend(branches)
        return path, ["--format", "generic", "--px", "px", "--py", "py", "--pz", "pz", "--energy", "e", *GENERIC]
    if kind == "qg":
        x = np.concatenate([jets, np.where(jets[..., :1] != 0, 211.0, 0.0)], axis=-1)  # pT, y, φ, PDG id
        inject(x, what)
        path = tmp_path / f"QG_{what}.npz"
        with open(path, "wb") as f:
            np.savez_compressed(f, X=x, y=labels.astype(np.float64))
        return path, []
    raise ValueError(kind)


def cluster(path, out, extra, *options):
    return CliRunner().invoke(main, ["cluster", str(path), "--out", str(out), "--workers", "0", "--chunk-size", "20",
                                     "--no-progress", *extra, *options])


CASES = [
    ("jetclass", "nan_energy", "non-finite"),
    ("jetclass", "negative_energy", "negative energy"),
    ("toptagging", "nan_energy", "non-finite"),  # was dropped as padding: the jet changed, exit 0
    ("toptagging", "negative_energy", "negative energy"),
    ("toptagging", "nan_padding", "non-finite"),
    ("generic_h5", "nan_energy", "non-finite"),
    ("generic_h5", "negative_energy", "negative energy"),
    ("generic_h5", "nan_padding", "non-finite"),
    ("toptagging", "zero_energy", "zero energy but non-zero momentum"),
    ("generic_h5_polar", "negative_pt", "negative pT"),
    ("generic_root_fixed", "negative_energy", "negative energy"),
    ("qg", "nan_pt", "non-finite"),
    ("qg", "negative_pt", "negative pT"),
    ("qg", "nan_padding", "non-finite"),
    ("generic_h5", "back_to_back", "sum to zero transverse momentum"),  # was a ZeroDivisionError traceback
    ("toptagging", "back_to_back", "sum to zero transverse momentum"),
    ("generic_h5", "beyond_float32", "too energetic for the float32 shards"),  # was written as inf, exit 0
]


@pytest.mark.parametrize(("kind", "what", "message"), CASES, ids=[f"{k}-{w}" for k, w, _ in CASES])
def test_bad_value_stops_naming_file_and_entry_or_is_skipped(tmp_path, kind, what, message):
    path, extra = write_file(tmp_path, kind, what)
    out = tmp_path / "shards"
    result = cluster(path, out, extra)
    assert result.exit_code == 1, result.output
    assert f"{path}, entry {BAD}: " in result.output and message in result.output
    assert "--on-bad-jet skip" in result.output and "Traceback" not in result.output
    # the chunk holding entry 13 (jets 0-19) left no shard; the other chunk is complete and listed
    assert [s.file for s in read_manifest(out).shards] == ["shard-00001.h5"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00001.h5"]

    clean_path, _ = write_file(tmp_path, kind, "clean")
    assert cluster(clean_path, tmp_path / "clean", extra).exit_code == 0
    skipped = cluster(path, tmp_path / "skip", extra, "--on-bad-jet", "skip")
    assert skipped.exit_code == 0, skipped.output
    manifest = read_manifest(tmp_path / "skip")
    assert [s.n_skipped for s in manifest.shards] == [1, 0] and manifest.n_jets == N_JETS - 1
    jets = np.concatenate([read_shard(tmp_path / "skip" / s.file).jets for s in manifest.shards])
    clean = np.concatenate([read_shard(tmp_path / "clean" / f"shard-0000{i}.h5").jets for i in (0, 1)])
    np.testing.assert_array_equal(jets, np.delete(clean, BAD, axis=0))  # every other jet is untouched


def test_jet_sums_beyond_float32_are_bad_even_when_each_constituent_fits():
    """Two constituents of 2e38 GeV each fit in float32; the jet's pT and E (4e38) would not."""
    from jjepa.preprocess.validate import bad_jets

    jets, labels = polar_jets()
    p4 = cartesian(jets)
    p4[BAD] = 0.0
    p4[BAD, :2] = [[2e38, 1.0, 0.0, 2e38], [2e38, -1.0, 0.0, 2e38]]
    p4[BAD + 1, 0] = [1.0, 0.0, 0.0, 3e38]  # its E alone is still within float32: a good jet
    bad, reason = bad_jets(as_chunk(p4, labels))
    assert np.flatnonzero(bad).tolist() == [BAD] and "float32" in reason[BAD]
