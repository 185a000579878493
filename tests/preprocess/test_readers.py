"""Readers on small files written in the real layouts; bad input gives errors naming file and entry."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tables
import uproot
from jjepa.common.errors import InputError
from jjepa.preprocess.rawformats import write_jetclass_root, write_toptagging_h5
from jjepa.preprocess.readers import detect_format, read_chunk, source_info
from jjepa.preprocess.readers.base import JETCLASS_CLASSES, GenericOptions, JetChunk


def toy(n_jets=40, seed=0, labels=None) -> JetChunk:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 50, n_jets)
    n = counts.sum()
    pt = rng.exponential(10, n) + 0.5
    eta, phi = rng.normal(0, 0.4, n), rng.uniform(-np.pi, np.pi, n)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    labels = np.arange(n_jets) % 10 if labels is None else labels
    return JetChunk(px=px, py=py, pz=pz, energy=np.sqrt(px**2 + py**2 + pz**2) + 0.1,
                    offsets=np.concatenate([[0], np.cumsum(counts)]), labels=np.asarray(labels, dtype=np.int64),
                    path="toy", start=0, stop=n_jets)


def part(chunk, start, stop, name):
    lo, hi = chunk.offsets[start], chunk.offsets[stop]
    return getattr(chunk, name)[lo:hi].astype(np.float32)


def test_jetclass_round_trip_in_the_middle_of_a_file(tmp_path):
    chunk = toy()
    path = tmp_path / "HToBB_000.root"
    write_jetclass_root(path, chunk)
    types = uproot.open(path)["tree"].typenames()
    assert types["label_QCD"] == "float" and types["label_Hbb"] == "bool" and types["label_Tbqq"] == "int32_t"
    assert detect_format(str(path)) == "jetclass"
    info = source_info("jetclass", str(path), None)
    assert info.n_jets == 40 and info.classes == JETCLASS_CLASSES
    back = read_chunk("jetclass", str(path), 13, 29, None)
    assert (back.start, back.stop, back.n_jets) == (13, 29, 16)
    np.testing.assert_array_equal(np.diff(back.offsets), np.diff(chunk.offsets)[13:29])
    for name in ("px", "py", "pz", "energy"):
        np.testing.assert_array_equal(getattr(back, name), part(chunk, 13, 29, name))
    assert back.labels.tolist() == chunk.labels[13:29].tolist()


def test_jetclass_two_labels_set_names_the_entry(tmp_path):
    path = tmp_path / "x.root"
    chunk = toy(labels=np.zeros(40))
    write_jetclass_root(path, chunk)
    with uproot.open(path) as f:
        arrays = f["tree"].arrays(library="np")
    arrays["label_Tbqq"][17] = 1
    with uproot.recreate(path) as f:
        f.mktree("tree", {k: v.dtype if v.dtype != object else "var * float32" for k, v in arrays.items()
                          if k != "npart"}, counter_name=lambda _: "npart")
        import awkward as ak

        f["tree"].extend({k: (ak.Array(list(v)) if v.dtype == object else v) for k, v in arrays.items()
                          if k != "npart"})
    with pytest.raises(InputError, match="2 of the label_") as err:
        read_chunk("jetclass", str(path), 0, 40, None)
    assert err.value.entry == 17 and str(path) in str(err.value)


def test_toptagging_round_trip_drops_padding(tmp_path):
    chunk = toy(labels=np.arange(40) % 2)
    path = tmp_path / "train.h5"
    write_toptagging_h5(path, chunk)
    with tables.open_file(path) as f:  # the real layout: pandas table, Blosc
        table = f.root.table.table
        assert table.dtype["values_block_0"].shape == (804,) and table.filters.complib.startswith("blosc")
    assert detect_format(str(path)) == "toptagging"
    assert source_info("toptagging", str(path), None).classes == ("QCD", "top")
    back = read_chunk("toptagging", str(path), 5, 25, None)
    np.testing.assert_array_equal(np.diff(back.offsets), np.diff(chunk.offsets)[5:25])
    assert back.labels.tolist() == (np.arange(5, 25) % 2).tolist()
    # within each jet the writer stores constituents pT-ordered: compare as sorted sets
    j = 7
    lo, hi = back.offsets[j - 5], back.offsets[j - 4]
    np.testing.assert_allclose(np.sort(back.energy[lo:hi]), np.sort(part(chunk, j, j + 1, "energy")), rtol=1e-6)


def test_toptagging_wrong_layout_is_refused(tmp_path):
    import pandas as pd

    path = tmp_path / "wrong.h5"
    pd.DataFrame(np.ones((3, 10), np.float32), columns=[f"c{i}" for i in range(10)]).to_hdf(
        path, key="table", format="table", complib="blosc", complevel=5)
    with pytest.raises(InputError, match="expected \\(804,\\)"):
        source_info("toptagging", str(path), None)


@pytest.mark.parametrize("polar", [False, True])
def test_generic_root(tmp_path, polar):
    chunk = toy()
    path = tmp_path / "events.root"
    import awkward as ak

    counts = np.diff(chunk.offsets)
    pt, eta, phi = np.hypot(chunk.px, chunk.py), np.arcsinh(chunk.pz / np.hypot(chunk.px, chunk.py)), np.arctan2(
        chunk.py, chunk.px)
    columns = {"pf_a": pt, "pf_b": eta, "pf_c": phi} if polar else {"pf_a": chunk.px, "pf_b": chunk.py,
                                                                     "pf_c": chunk.pz}
    columns["pf_e"] = chunk.energy
    with uproot.recreate(path) as f:
        f.mktree("Events", {**{k: "var * float64" for k in columns}, "is_sig": np.int32})
        f["Events"].extend({**{k: ak.unflatten(v, counts) for k, v in columns.items()},
                            "is_sig": (chunk.labels % 2).astype(np.int32)})
    names = dict(pt="pf_a", eta="pf_b", phi="pf_c") if polar else dict(px="pf_a", py="pf_b", pz="pf_c")
    options = GenericOptions(tree="Events", energy="pf_e", label="is_sig", classes=("bkg", "sig"), **names)
    assert detect_format(str(path)) == "generic"
    assert source_info("generic", str(path), options).classes == ("bkg", "sig")
    back = read_chunk("generic", str(path), 3, 9, options)
    lo, hi = chunk.offsets[3], chunk.offsets[9]
    np.testing.assert_allclose(back.px, chunk.px[lo:hi], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(back.pz, chunk.pz[lo:hi], rtol=1e-9, atol=1e-9)
    assert back.labels.tolist() == (chunk.labels[3:9] % 2).tolist()
    unlabeled = read_chunk("generic", str(path), 0, 2, GenericOptions(tree="Events", energy="pf_e", **names))
    assert unlabeled.labels.tolist() == [-1, -1]
    with pytest.raises(InputError, match="missing branches.*pf_x.*available.*pf_a"):
        source_info("generic", str(path), GenericOptions(tree="Events", px="pf_x", py="pf_b", pz="pf_c",
                                                        energy="pf_e"))


def test_generic_hdf5_padded(tmp_path):
    path = tmp_path / "jets.h5"
    e = np.array([[5.0, 3.0, 0.0], [7.0, 0.0, 0.0]])
    px = np.array([[3.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    with h5py.File(path, "w") as f:
        for name, value in (("px", px), ("py", px / 2), ("pz", px / 3), ("e", e)):
            f[name] = value
    options = GenericOptions(px="px", py="py", pz="pz", energy="e")
    back = read_chunk("generic", str(path), 0, 2, options)
    assert back.offsets.tolist() == [0, 2, 3] and back.px.tolist() == [3.0, 1.0, 2.0]
    assert back.labels.tolist() == [-1, -1]


def test_missing_truncated_and_garbage_files(tmp_path):
    good = tmp_path / "good.root"
    write_jetclass_root(good, toy(200))
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x00garbage" * 100)
    for path, fmt in ((truncated, "jetclass"), (garbage, "toptagging"), (tmp_path / "absent.root", "jetclass")):
        with pytest.raises(InputError) as err:
            source_info(fmt, str(path), None)
            read_chunk(fmt, str(path), 0, 200, None)
        assert str(path) in str(err.value)
    with pytest.raises(InputError, match="lacks branches.*part_px.*it has"):
        path = tmp_path / "other.root"
        with uproot.recreate(path) as f:
            f.mktree("tree", {"x": np.float32}).extend({"x": np.ones(3, np.float32)})
        source_info("jetclass", str(path), None)
