"""Readers on small files written in the real layouts; bad input gives errors naming file and entry."""

from __future__ import annotations

import logging
import pickle

import awkward as ak
import h5py
import numpy as np
import pandas as pd
import pytest
import tables
import uproot
from jjepa.common.errors import InputError
from jjepa.preprocess.rawformats import jet_kinematics, write_jetclass_root, write_toptagging_h5
from jjepa.preprocess.readers import FORMATS, detect_format, read_chunk, source_info
from jjepa.preprocess.readers.base import JETCLASS_CLASSES, TOPTAGGING_CLASSES, GenericOptions, JetChunk
from jjepa.preprocess.readers.toptagging import EXPECTED_COLUMNS

N_JETS = 60


def toy_chunk(n_jets: int = N_JETS, seed: int = 0, labels=None) -> JetChunk:
    """Random jets of 1–40 constituents (pT 0.5–50 GeV, |η| ≲ 1), constituents in random pT order."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 41, n_jets)
    n = int(counts.sum())
    pt = rng.exponential(10, n) + 0.5
    eta, phi = rng.normal(0, 0.4, n), rng.uniform(-np.pi, np.pi, n)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    labels = np.arange(n_jets) % 10 if labels is None else labels
    return JetChunk(px=px, py=py, pz=pz, energy=np.sqrt(px**2 + py**2 + pz**2) + 0.1,
                    offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                    labels=np.asarray(labels, dtype=np.int64), path="toy", start=0, stop=n_jets)


def constituents(chunk: JetChunk, start: int, stop: int) -> np.ndarray:
    """float64 (P, 4) px, py, pz, E of jets [start, stop)."""
    lo, hi = chunk.offsets[start], chunk.offsets[stop]
    return np.stack([a[lo:hi] for a in (chunk.px, chunk.py, chunk.pz, chunk.energy)], axis=1)


def write_tree(path, branches: dict, name: str = "tree") -> None:
    """A TTree from numpy (flat or fixed-size) and awkward (jagged or record) arrays."""
    types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype if v.ndim == 1
                 else np.dtype((v.dtype, v.shape[1:]))) for k, v in branches.items()}
    with uproot.recreate(path) as f:
        f.mktree(name, types).extend(branches)


def jagged(chunk: JetChunk, **columns) -> ak.Array:
    """A record of jagged fields (one list per jet) from flat constituent arrays."""
    return ak.unflatten(ak.zip(columns), np.diff(chunk.offsets))


def jetclass_file(tmp_path, chunk: JetChunk, labels: dict | None = None, name: str = "JetClass_000.root"):
    """A JetClass-layout tree with hand-made label branches (to make bad labels the writer refuses)."""
    path = tmp_path / name
    part = jagged(chunk, px=chunk.px.astype(np.float32), py=chunk.py.astype(np.float32),
                  pz=chunk.pz.astype(np.float32), energy=chunk.energy.astype(np.float32))
    write_tree(path, {"part": part, **(labels or {})})
    return path


# ---------------------------------------------------------------------------------------- JetClass

def test_jetclass_writer_makes_a_ttree_like_the_real_files(tmp_path):
    chunk = toy_chunk()
    sdmass = np.linspace(10, 200, N_JETS)
    path = tmp_path / "HToBB_000.root"
    write_jetclass_root(path, chunk, jet_scalars={"jet_sdmass": sdmass}, basket_jets=16)
    with uproot.open(path) as f:
        assert f.classnames(cycle=False) == {"tree": "TTree"}  # not an RNTuple
        tree = f["tree"]
        types = tree.typenames()
        assert types["part_px"] == "float[]" and types["npart"] == "int32_t"
        # mixed label dtypes, as in the real files: float, bool and int32
        assert (types["label_QCD"], types["label_Hbb"], types["label_Wqq"]) == ("float", "bool", "int32_t")
        scalars = ["jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles", "jet_sdmass",
                   "jet_tau1", "jet_tau2", "jet_tau3", "jet_tau4"]
        assert all(types[s] == "float" for s in scalars)
        arrays = tree.arrays(scalars + ["npart"], library="np")
    expected = jet_kinematics(chunk)
    for name in ("jet_pt", "jet_eta", "jet_phi", "jet_energy", "jet_nparticles"):
        np.testing.assert_allclose(arrays[name], expected[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(arrays["npart"], np.diff(chunk.offsets))
    np.testing.assert_allclose(arrays["jet_sdmass"], sdmass, rtol=1e-6)
    assert not arrays["jet_tau2"].any()


@pytest.mark.parametrize(("start", "stop"), [(0, N_JETS), (17, 41), (23, 23), (N_JETS - 1, N_JETS)])
def test_jetclass_round_trip_of_an_entry_range(tmp_path, start, stop):
    chunk = toy_chunk()
    path = tmp_path / "HToBB_000.root"
    write_jetclass_root(path, chunk, basket_jets=16)  # the range crosses baskets
    info = source_info("jetclass", path)
    assert (info.n_jets, info.classes) == (N_JETS, JETCLASS_CLASSES)
    back = read_chunk("jetclass", path, start, stop)
    assert (back.start, back.stop, back.n_jets, back.path) == (start, stop, stop - start, str(path))
    np.testing.assert_array_equal(np.diff(back.offsets), np.diff(chunk.offsets)[start:stop])
    assert back.offsets[0] == 0 and back.offsets.dtype == np.int64
    got = np.stack([back.px, back.py, back.pz, back.energy], axis=1)
    assert got.dtype == np.float64 and all(a.flags.c_contiguous for a in (back.px, back.energy))
    np.testing.assert_array_equal(got, constituents(chunk, start, stop).astype(np.float32))
    np.testing.assert_array_equal(back.labels, chunk.labels[start:stop])
    assert back.labels.dtype == np.int64


def test_jetclass_without_label_branches_is_unlabeled(tmp_path):
    path = tmp_path / "data.root"
    write_jetclass_root(path, toy_chunk(labels=np.full(N_JETS, -1)))
    assert not any(b.startswith("label_") for b in uproot.open(path)["tree"].keys())
    assert read_chunk("jetclass", path, 5, 9).labels.tolist() == [-1] * 4


def test_jetclass_labels_of_any_dtype_count_when_nonzero(tmp_path):
    chunk = toy_chunk(10)
    cls = np.arange(10)
    dtypes = [np.float32, np.bool_, np.int32, np.float64, np.int8, np.int32, np.int32, np.int32, np.int32, np.uint8]
    labels = {f"label_{c}": (cls == i).astype(dt) for i, (c, dt) in enumerate(zip(JETCLASS_CLASSES, dtypes,
                                                                                  strict=True))}
    labels["label_QCD"] = labels["label_QCD"] * np.float32(0.5)  # set means != 0, not == 1
    path = jetclass_file(tmp_path, chunk, labels)
    assert read_chunk("jetclass", path, 0, 10).labels.tolist() == cls.tolist()


def test_jetclass_aux_branches_are_never_read(tmp_path, monkeypatch):
    chunk = toy_chunk(10)
    aux = jagged(chunk, eta=chunk.px)  # truth: must never become an input
    path = jetclass_file(tmp_path, chunk, {"aux_genpart": aux, "label_QCD": np.ones(10, np.float32),
                                           **{f"label_{c}": np.zeros(10, np.int32) for c in JETCLASS_CLASSES[1:]}})
    asked: list = []
    arrays = uproot.TTree.arrays

    def spy(self, expressions=None, *args, **kwargs):
        asked.extend(expressions)
        return arrays(self, expressions, *args, **kwargs)

    monkeypatch.setattr(uproot.TTree, "arrays", spy)
    read_chunk("jetclass", path, 0, 10)
    assert asked and not [b for b in asked if b.startswith("aux_")]


@pytest.mark.parametrize(("set_at_7", "message"), [(("Hbb", "Tbqq"), "2 labels are set \\(label_Hbb, label_Tbqq\\)"),
                                                  ((), "no label is set")])
def test_jetclass_jet_without_exactly_one_label_names_the_entry(tmp_path, set_at_7, message):
    chunk = toy_chunk(12)
    onehot = np.zeros((12, 10), bool)
    onehot[:, 0] = True
    onehot[7] = [c in set_at_7 for c in JETCLASS_CLASSES]
    labels = {f"label_{c}": onehot[:, i].astype(np.float32 if i == 0 else np.int32)
              for i, c in enumerate(JETCLASS_CLASSES)}
    path = jetclass_file(tmp_path, chunk, labels)
    read_chunk("jetclass", path, 0, 7)  # entries before the bad one read fine
    with pytest.raises(InputError, match=message) as err:
        read_chunk("jetclass", path, 4, 12)
    assert err.value.entry == 7 and str(err.value).startswith(f"{path}, entry 7: ")


def test_jetclass_some_label_branches_missing(tmp_path):
    chunk = toy_chunk(5)
    path = jetclass_file(tmp_path, chunk, {"label_QCD": np.ones(5, np.float32), "label_Hbb": np.zeros(5, bool)})
    with pytest.raises(InputError, match="label branches .*label_Hcc.* are missing while .*label_QCD"):
        source_info("jetclass", path)


def test_jetclass_missing_branches_lists_those_that_exist(tmp_path):
    path = tmp_path / "other.root"
    write_tree(path, {"part_px": ak.Array([[1.0], [2.0]]), "jet_pt": np.ones(2)})
    for call in (lambda: source_info("jetclass", path), lambda: read_chunk("jetclass", path, 0, 2)):
        with pytest.raises(InputError, match=r"lacks branches \['part_py', 'part_pz', 'part_energy'\]; "
                                             r"it has \['jet_pt', 'npart_px', 'part_px'\]") as err:
            call()
        assert err.value.path == str(path) and err.value.hint


def test_jetclass_rntuple_or_other_tree_names_are_refused(tmp_path):
    rntuple = tmp_path / "rntuple.root"
    with uproot.recreate(rntuple) as f:
        f["tree"] = {"part_px": np.ones(3)}  # uproot 5 makes an RNTuple here
    with pytest.raises(InputError, match="'tree' is a ROOT::RNTuple, not a TTree"):
        source_info("jetclass", rntuple)
    other = tmp_path / "events.root"
    write_tree(other, {"x": np.ones(3)}, name="Events")
    with pytest.raises(InputError, match="no TTree 'tree'; the file holds .*Events") as err:
        read_chunk("jetclass", other, 0, 1)
    assert "--format generic" in err.value.hint


@pytest.mark.parametrize(("start", "stop"), [(0, N_JETS + 1), (-1, 3), (10, 5)])
def test_entry_ranges_outside_the_file_are_refused_not_clipped(tmp_path, start, stop):
    chunk = toy_chunk(labels=np.arange(N_JETS) % 2)
    write_jetclass_root(tmp_path / "a.root", chunk)
    write_toptagging_h5(tmp_path / "a.h5", chunk)
    for fmt, name in (("jetclass", "a.root"), ("toptagging", "a.h5")):
        with pytest.raises(InputError, match=rf"entry range \[{start}, {stop}\) is not within the file's {N_JETS} jets"):
            read_chunk(fmt, tmp_path / name, start, stop)


# ----------------------------------------------------------------------------------------- Top Tagging

def test_toptagging_writer_makes_the_pandas_table_blosc_layout(tmp_path):
    path = tmp_path / "train.h5"
    write_toptagging_h5(path, toy_chunk(labels=np.arange(N_JETS) % 2))
    with tables.open_file(path) as h5:
        table = h5.get_node("/table/table")
        assert table.dtype.names == ("index", "values_block_0", "values_block_1")
        assert table.dtype["values_block_0"].base == np.float32 and table.dtype["values_block_0"].shape == (804,)
        assert table.dtype["values_block_1"].base == np.int64 and table.dtype["values_block_1"].shape == (2,)
        assert table.filters.complib == "blosc" and table.filters.complevel == 5
        assert h5.root.table._v_attrs.pandas_type == "frame_table"
    with h5py.File(path) as f:  # pandas stores the block's column names as a protocol-0 pickle
        raw = bytes(f["table/table"].attrs["values_block_1_kind"])
        assert pickle.loads(raw) == ["ttv", "is_signal_new"]
        assert "32001" in f["table/table"]._filters  # the HDF5 filter id of Blosc


@pytest.mark.parametrize(("start", "stop"), [(0, N_JETS), (13, 37), (30, 30)])
def test_toptagging_round_trip_of_a_row_range(tmp_path, start, stop):
    chunk = toy_chunk(labels=np.arange(N_JETS) % 2)
    path = tmp_path / "val.h5"
    write_toptagging_h5(path, chunk)
    info = source_info("toptagging", path)
    assert (info.n_jets, info.classes) == (N_JETS, TOPTAGGING_CLASSES)
    back = read_chunk("toptagging", path, start, stop)
    assert (back.start, back.stop, back.n_jets) == (start, stop, stop - start)
    np.testing.assert_array_equal(np.diff(back.offsets), np.diff(chunk.offsets)[start:stop])
    np.testing.assert_array_equal(back.labels, np.arange(start, stop) % 2)
    # the file holds each jet's constituents in decreasing pT: sort the originals the same way
    p4 = constituents(chunk, start, stop)
    jet_of = np.repeat(np.arange(stop - start), np.diff(chunk.offsets)[start:stop])
    expected = p4[np.lexsort((-np.hypot(p4[:, 0], p4[:, 1]).astype(np.float32), jet_of))].astype(np.float32)
    got = np.stack([back.px, back.py, back.pz, back.energy], axis=1)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)


def test_toptagging_pytables_fallback_reads_the_same(tmp_path, monkeypatch, caplog):
    from jjepa.preprocess.readers import toptagging

    chunk = toy_chunk(labels=np.arange(N_JETS) % 2)
    path = tmp_path / "train.h5"
    write_toptagging_h5(path, chunk)
    fast = read_chunk("toptagging", path, 10, 50)
    monkeypatch.setattr(toptagging, "HAVE_HDF5PLUGIN", False)
    with caplog.at_level(logging.WARNING, logger="jjepa.preprocess.readers.toptagging"):
        slow = read_chunk("toptagging", path, 10, 50)
    assert "hdf5plugin is not installed" in caplog.text
    for name in ("px", "py", "pz", "energy", "offsets", "labels"):
        np.testing.assert_array_equal(getattr(slow, name), getattr(fast, name))


def test_toptagging_keeps_the_hardest_max_particles(tmp_path):
    chunk = toy_chunk(labels=np.zeros(N_JETS))
    path = tmp_path / "test.h5"
    write_toptagging_h5(path, chunk, max_particles=5)
    back = read_chunk("toptagging", path, 0, N_JETS)
    counts = np.diff(chunk.offsets)
    np.testing.assert_array_equal(np.diff(back.offsets), np.minimum(counts, 5))
    pt = np.hypot(back.px, back.py)
    jet = int(np.argmax(counts))  # the hardest 5 of this jet, in decreasing pT
    original = np.sort(np.hypot(*constituents(chunk, jet, jet + 1)[:, :2].T).astype(np.float32))[::-1][:5]
    np.testing.assert_allclose(pt[back.offsets[jet]:back.offsets[jet + 1]], original, rtol=1e-6)
    with pytest.raises(ValueError, match="max_particles"):
        write_toptagging_h5(tmp_path / "x.h5", chunk, max_particles=201)
    with pytest.raises(ValueError, match="0 \\(QCD\\) or 1 \\(top\\)"):
        write_toptagging_h5(tmp_path / "y.h5", toy_chunk(labels=np.full(N_JETS, 3)))


def pandas_table(path, columns: list[str], n_rows: int = 3, key: str = "table", signal: int = 1) -> None:
    frame = pd.DataFrame(np.ones((n_rows, len(columns)), np.float32), columns=columns)
    frame["ttv"] = np.zeros(n_rows, np.int64)
    frame["is_signal_new"] = np.full(n_rows, signal, np.int64)
    frame.to_hdf(path, key=key, format="table", complib="blosc", complevel=5)


def test_toptagging_wrong_column_count_is_refused(tmp_path):
    path = tmp_path / "wrong.h5"
    pandas_table(path, [f"c{i}" for i in range(10)])
    assert detect_format(path) == "toptagging"  # it has /table/table: the reader then says what is wrong
    for call in (lambda: source_info("toptagging", path), lambda: read_chunk("toptagging", path, 0, 3)):
        with pytest.raises(InputError, match="values_block_0 holds 10 columns \\(c0, c1.*column 0 is 'c0', "
                                             "expected 'E_0'; expected values_block_0 float32\\[804\\]") as err:
            call()
        assert err.value.path == str(path)


def test_toptagging_wrong_column_order_is_refused(tmp_path):
    swapped = list(EXPECTED_COLUMNS)
    swapped[4], swapped[5] = swapped[5], swapped[4]  # PX_1 before E_1: same count, wrong meaning
    pandas_table(tmp_path / "swapped.h5", swapped)
    with pytest.raises(InputError, match="column 4 is 'PX_1', expected 'E_1'"):
        source_info("toptagging", tmp_path / "swapped.h5")


def test_toptagging_wrong_shape_without_column_names_is_refused(tmp_path):
    path = tmp_path / "nameless.h5"
    pandas_table(path, [f"c{i}" for i in range(10)])
    with h5py.File(path, "a") as f:
        del f["table/table"].attrs["values_block_0_kind"]
    with pytest.raises(InputError, match="values_block_0 is float32\\[10\\]; expected"):
        source_info("toptagging", path)


def test_toptagging_other_key_and_bad_label(tmp_path):
    pandas_table(tmp_path / "key.h5", EXPECTED_COLUMNS, key="jets")
    with pytest.raises(InputError, match="no compound dataset /table/table .*it holds \\['/jets/table'\\]"):
        source_info("toptagging", tmp_path / "key.h5")
    pandas_table(tmp_path / "label.h5", EXPECTED_COLUMNS, signal=2)
    with pytest.raises(InputError, match="is_signal_new is 2, expected 0 \\(QCD\\) or 1 \\(top\\)") as err:
        read_chunk("toptagging", tmp_path / "label.h5", 1, 3)
    assert err.value.entry == 1


class _RunsCode:
    def __reduce__(self):
        return (exec, ("import jjepa; jjepa.CODE_RAN = True",))


def test_toptagging_column_names_are_read_without_running_pickled_code(tmp_path, caplog):
    """Regression: PyTables' attribute access unpickles whatever a data file holds; we must not."""
    import jjepa

    path = tmp_path / "evil.h5"
    write_toptagging_h5(path, toy_chunk(4, labels=[0, 1, 0, 1]))
    with h5py.File(path, "a") as f:
        f["table/table"].attrs["values_block_0_kind"] = np.bytes_(pickle.dumps(_RunsCode(), protocol=0))
    with caplog.at_level(logging.WARNING, logger="jjepa.preprocess.readers.toptagging"):
        back = read_chunk("toptagging", path, 0, 4)
    assert not hasattr(jjepa, "CODE_RAN")
    assert back.n_jets == 4 and "cannot read the column names" in caplog.text


# ----------------------------------------------------------------------------------------------- generic

def polar(chunk: JetChunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pt = np.hypot(chunk.px, chunk.py)
    return pt, np.arcsinh(chunk.pz / pt), np.arctan2(chunk.py, chunk.px)


@pytest.mark.parametrize("use_polar", [False, True])
def test_generic_root_jagged(tmp_path, use_polar):
    chunk = toy_chunk()
    a, b, c = polar(chunk) if use_polar else (chunk.px, chunk.py, chunk.pz)
    path = tmp_path / "events.root"
    write_tree(path, {"pf": jagged(chunk, a=a, b=b, c=c, e=chunk.energy), "is_sig": (chunk.labels % 2).astype(np.int32),
                      "aux_x": np.ones(N_JETS)}, name="Events")
    names = dict(pt="pf_a", eta="pf_b", phi="pf_c") if use_polar else dict(px="pf_a", py="pf_b", pz="pf_c")
    options = GenericOptions(energy="pf_e", label="is_sig", classes=("bkg", "sig"), **names)  # the only TTree
    assert detect_format(path) == "generic"
    info = source_info("generic", path, options)
    assert (info.n_jets, info.classes) == (N_JETS, ("bkg", "sig"))
    back = read_chunk("auto", path, 11, 29, options)
    np.testing.assert_array_equal(np.diff(back.offsets), np.diff(chunk.offsets)[11:29])
    np.testing.assert_allclose(np.stack([back.px, back.py, back.pz, back.energy], axis=1),
                               constituents(chunk, 11, 29), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(back.labels, chunk.labels[11:29] % 2)
    unlabeled = GenericOptions(tree="Events", energy="pf_e", **names)
    assert source_info("generic", path, unlabeled).classes == ()
    assert read_chunk("generic", path, 0, 2, unlabeled).labels.tolist() == [-1, -1]


def test_generic_root_fixed_size_arrays_are_zero_padded(tmp_path):
    path = tmp_path / "padded.root"
    e = np.array([[5.0, 3.0, 0.0], [7.0, 0.0, 0.0]], np.float32)
    write_tree(path, {"px": e / 2, "py": e / 3, "pz": e / 4, "e": e, "onehot": np.eye(2, dtype=np.int8)[[1, 0]]})
    back = read_chunk("generic", path, 0, 2, GenericOptions(px="px", py="py", pz="pz", energy="e",
                                                            label="onehot", classes=("q", "g")))
    assert back.offsets.tolist() == [0, 2, 3] and back.energy.tolist() == [5.0, 3.0, 7.0]
    assert back.labels.tolist() == [1, 0]


def test_generic_root_fixed_size_arrays_of_different_widths_are_refused_naming_them(tmp_path):
    path = tmp_path / "mismatch.root"
    e = np.zeros((3, 48), np.float32)
    e[:, :5] = 10.0
    write_tree(path, {"px": e[:, :40] / 2, "py": e[:, :40] / 3, "pz": e[:, :40] / 4, "e": e})
    with pytest.raises(InputError, match=r"differ in width: 'px' float\[40\], .*'e' float\[48\]") as err:
        read_chunk("generic", path, 0, 3, GenericOptions(px="px", py="py", pz="pz", energy="e"))
    assert err.value.path == str(path)


def test_generic_root_choosing_trees_and_branches(tmp_path):
    path = tmp_path / "two.root"
    with uproot.recreate(path) as f:
        for name in ("A", "B"):
            f.mktree(name, {"x": "var * float64"}).extend({"x": ak.Array([[1.0], [2.0, 3.0]])})
    options = GenericOptions(px="x", py="x", pz="x", energy="x")
    with pytest.raises(InputError, match=r"2 TTrees \(\['A', 'B'\]\)") as err:
        source_info("generic", path, options)
    assert "--tree" in err.value.hint
    with pytest.raises(InputError, match=r"no TTree 'C'; TTrees here: \['A', 'B'\]"):
        read_chunk("generic", path, 0, 2, GenericOptions(tree="C", px="x", py="x", pz="x", energy="x"))
    assert read_chunk("generic", path, 1, 2, GenericOptions(tree="B", px="x", py="x", pz="x", energy="x")
                      ).energy.tolist() == [2.0, 3.0]
    with pytest.raises(InputError, match=r"missing branches \['y'\]; available: \['nx', 'x'\]"):
        source_info("generic", path, GenericOptions(tree="A", px="x", py="y", pz="x", energy="x"))


def write_h5(path, **datasets) -> None:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value


@pytest.mark.parametrize("use_polar", [False, True])
def test_generic_hdf5_padded(tmp_path, use_polar):
    chunk = toy_chunk()
    counts = np.diff(chunk.offsets)
    width = counts.max() + 3
    slot = np.arange(len(chunk.px)) - np.repeat(chunk.offsets[:-1], counts)
    jet_of = np.repeat(np.arange(N_JETS), counts)

    def pad(flat):
        out = np.zeros((N_JETS, width))
        out[jet_of, slot] = flat
        return out

    a, b, c = polar(chunk) if use_polar else (chunk.px, chunk.py, chunk.pz)
    path = tmp_path / "jets.hdf5"
    write_h5(path, **{"jets/a": pad(a), "jets/b": pad(b), "jets/c": pad(c), "jets/e": pad(chunk.energy),
                      "jets/y": chunk.labels % 3})
    names = dict(pt="jets/a", eta="jets/b", phi="jets/c") if use_polar else dict(px="jets/a", py="jets/b",
                                                                                  pz="jets/c")
    options = GenericOptions(energy="jets/e", label="jets/y", classes=("x", "y", "z"), **names)
    assert detect_format(path) == "generic"
    assert source_info("generic", path, options).n_jets == N_JETS
    back = read_chunk("generic", path, 20, 45, options)
    np.testing.assert_array_equal(np.diff(back.offsets), counts[20:45])
    np.testing.assert_allclose(np.stack([back.px, back.py, back.pz, back.energy], axis=1),
                               constituents(chunk, 20, 45), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(back.labels, chunk.labels[20:45] % 3)


def test_generic_hdf5_flat_with_counts_and_compression(tmp_path):
    import hdf5plugin

    chunk = toy_chunk()
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        for name in ("px", "py", "pz", "energy"):
            f.create_dataset(name, data=getattr(chunk, name), **hdf5plugin.Blosc())
        f["n"] = np.diff(chunk.offsets).astype(np.int32)
        f["y"] = np.eye(2, dtype=bool)[chunk.labels % 2]  # one-hot
    options = GenericOptions(px="px", py="py", pz="pz", energy="energy", counts="n", label="y", classes=("b", "s"))
    assert source_info("generic", path, options).n_jets == N_JETS
    back = read_chunk("generic", path, 7, 19, options)
    np.testing.assert_array_equal(np.diff(back.offsets), np.diff(chunk.offsets)[7:19])
    np.testing.assert_array_equal(np.stack([back.px, back.py, back.pz, back.energy], axis=1),
                                  constituents(chunk, 7, 19))
    np.testing.assert_array_equal(back.labels, chunk.labels[7:19] % 2)


@pytest.mark.parametrize("extra", [5, -5])
def test_generic_hdf5_flat_counts_must_add_up_to_the_datasets(tmp_path, extra):
    """Constituents beyond the counts' total were silently dropped; fewer were caught only at the last chunk."""
    chunk = toy_chunk()
    n = np.diff(chunk.offsets)
    n[-1] += extra  # the last jet claims 5 constituents more (or fewer) than the datasets hold
    path = tmp_path / "flat.h5"
    write_h5(path, px=chunk.px, py=chunk.py, pz=chunk.pz, energy=chunk.energy, n=n)
    options = GenericOptions(px="px", py="py", pz="pz", energy="energy", counts="n")
    with pytest.raises(InputError, match=f"counts 'n' add up to {n.sum()} constituents but the flat datasets "
                       rf"\['px', 'py', 'pz', 'energy'\] hold {len(chunk.px)}") as err:
        source_info("generic", path, options)
    assert err.value.path == str(path)


def test_cluster_cli_reads_flat_hdf5_with_counts(tmp_path):
    """``--counts`` (or ``counts:`` in the --branches YAML) reaches the flat HDF5 layout from the CLI."""
    from click.testing import CliRunner
    from jjepa.common.shards import read_manifest
    from jjepa.preprocess.cli import main

    chunk = toy_chunk()
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as f:
        for name in ("px", "py", "pz", "energy"):
            f[name] = getattr(chunk, name)
        f["n"] = np.diff(chunk.offsets).astype(np.int32)
    (tmp_path / "branches.yaml").write_text("px: px\npy: py\npz: pz\nenergy: energy\ncounts: n\n")
    common = ["--format", "generic", "--workers", "0", "--no-progress"]
    for name, names in (("cli", ["--px", "px", "--py", "py", "--pz", "pz", "--energy", "energy", "--counts", "n"]),
                        ("yaml", ["--branches", str(tmp_path / "branches.yaml")])):
        result = CliRunner().invoke(main, ["cluster", str(path), "--out", str(tmp_path / name), *common, *names])
        assert result.exit_code == 0, result.output
        assert read_manifest(tmp_path / name).n_jets == N_JETS


def test_generic_hdf5_unsupported_layouts_say_what_is_supported(tmp_path):
    path = tmp_path / "qg.h5"
    write_h5(path, X=np.ones((4, 3, 4)), flat=np.ones(6))
    for names in ({"px": "X", "py": "X", "pz": "X"}, {"px": "flat", "py": "flat", "pz": "flat"}):
        with pytest.raises(InputError, match="not supported; supported: 2-D zero-padded datasets .*counts"):
            source_info("generic", path, GenericOptions(energy=names["px"], **names))
    with pytest.raises(InputError, match=r"no dataset 'E'; datasets here: \['X', 'flat'\]"):
        source_info("generic", path, GenericOptions(px="X", py="X", pz="X", energy="E"))


def test_generic_option_and_label_errors(tmp_path):
    path = tmp_path / "jets.h5"
    e = np.array([[5.0, 3.0], [7.0, 0.0], [1.0, 0.0]])
    write_h5(path, e=e, y=np.array([0, 2, 1]), yf=np.array([0.0, 1.5, 1.0]))
    with pytest.raises(InputError, match="needs the names of px, py, pz, energy or of pt, eta, phi, energy"):
        source_info("generic", path, None)
    with pytest.raises(InputError, match="needs class names") as err:
        source_info("generic", path, GenericOptions(px="e", py="e", pz="e", energy="e", label="y"))
    assert "--classes" in err.value.hint
    options = GenericOptions(px="e", py="e", pz="e", energy="e", label="y", classes=("a", "b"))
    with pytest.raises(InputError, match=r"label 'y' is 2, expected an integer in \[0, 2\)") as err:
        read_chunk("generic", path, 0, 3, options)
    assert err.value.entry == 1
    with pytest.raises(InputError, match="label 'yf' is 1.5") as err:
        read_chunk("generic", path, 0, 3, GenericOptions(px="e", py="e", pz="e", energy="e", label="yf",
                                                        classes=("a", "b")))
    assert read_chunk("generic", path, 2, 3, options).labels.tolist() == [1]


# ------------------------------------------------------------------------------- detection and bad files

def test_detect_format_goes_by_content_not_name(tmp_path):
    chunk = toy_chunk(labels=np.arange(N_JETS) % 2)
    write_jetclass_root(tmp_path / "jets.dat", chunk)
    write_toptagging_h5(tmp_path / "jets.bin", chunk)
    assert detect_format(tmp_path / "jets.dat") == "jetclass"
    assert detect_format(tmp_path / "jets.bin") == "toptagging"
    assert source_info("auto", tmp_path / "jets.bin").classes == TOPTAGGING_CLASSES
    assert read_chunk("auto", tmp_path / "jets.dat", 3, 5).labels.tolist() == [1, 0]
    assert FORMATS == ("auto", "jetclass", "toptagging", "qg", "generic")
    with pytest.raises(ValueError, match="format must be one of"):
        source_info("parquet", tmp_path / "jets.dat")


GENERIC = GenericOptions(px="part_px", py="part_py", pz="part_pz", energy="part_energy")


def good_file(tmp_path, kind: str):
    chunk = toy_chunk(200, labels=np.arange(200) % 2)
    path = tmp_path / f"good.{kind}"
    (write_jetclass_root if kind == "root" else write_toptagging_h5)(path, chunk)
    return path


@pytest.mark.parametrize("fmt", ["auto", "jetclass", "toptagging", "generic"])
def test_missing_file(tmp_path, fmt):
    path = tmp_path / "absent.root"
    for call in (lambda: source_info(fmt, path, GENERIC), lambda: read_chunk(fmt, path, 0, 1, GENERIC)):
        with pytest.raises(InputError, match="absent.root: no such file"):
            call()
    with pytest.raises(InputError, match="no such file"):
        detect_format(path)


@pytest.mark.parametrize("kind", ["root", "h5"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_files(tmp_path, kind, fraction):
    good = good_file(tmp_path, kind)
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * fraction)])
    fmt = "jetclass" if kind == "root" else "toptagging"
    for call in (lambda: source_info(fmt, cut), lambda: read_chunk(fmt, cut, 0, 200)):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.path == str(cut) and "truncated" in str(err.value)


@pytest.mark.parametrize("suffix", [".root", ".h5"])
@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 100, b"root" + b"\x00" * 60])
def test_garbage_files(tmp_path, suffix, content):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(content)
    for fmt in ("jetclass", "toptagging", "generic", "auto"):
        with pytest.raises(InputError) as err:
            read_chunk(fmt, path, 0, 1, GENERIC)
        assert err.value.path == str(path)
    if not content.startswith(b"root"):
        with pytest.raises(InputError, match="neither a ROOT nor an HDF5 file"):
            detect_format(path)


def test_hdf5_file_given_as_jetclass_and_root_as_toptagging(tmp_path):
    h5, root = good_file(tmp_path, "h5"), good_file(tmp_path, "root")
    with pytest.raises(InputError, match="cannot open as ROOT"):
        source_info("jetclass", h5)
    with pytest.raises(InputError, match="cannot open as HDF5"):
        source_info("toptagging", root)
