"""The quark–gluon (EnergyFlow ``QG_jets*.npz``) reader on small files written in the real layout."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from jjepa.common.errors import InputError
from jjepa.common.schema import validate_shard
from jjepa.common.shards import read_manifest
from jjepa.preprocess.cli import main
from jjepa.preprocess.readers import FORMATS, detect_format, read_chunk, source_info
from jjepa.preprocess.readers.base import QG_CLASSES, GenericOptions
from jjepa.preprocess.readers.qg import PARTICLE_MASSES, masses
from jjepa.preprocess.validate import check_chunk

PION_MASS = 0.13957  # GeV, EnergyFlow's mass of |PDG id| 211

# Three hand-made jets, (pT [GeV], rapidity, φ [rad], PDG id) per particle, zero-padded to M = 4.
HAND_X = np.array([
    [[10.0, 0.5, 1.0, 22], [3.0, -1.2, 4.0, 211], [0, 0, 0, 0], [0, 0, 0, 0]],  # γ, π+ (φ beyond π)
    [[20.0, 0.1, -0.3, -211], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],  # π-
    [[5.0, 0.2, 6.5, 130], [2.0, 0.3, 6.4, 2112], [1.0, 0.25, 6.45, -2212], [0, 0, 0, 0]],  # K0L, n, p̄
])
HAND_Y = np.array([0, 1, 1])


def write_qg(path, x, y, compressed: bool = True) -> None:
    """An npz in the EnergyFlow layout (``X`` float64, ``y``) at exactly ``path`` (any suffix)."""
    with open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, X=np.asarray(x, dtype=np.float64), y=y)


def by_hand(pt: float, rapidity: float, phi: float, mass: float) -> list[float]:
    """(px, py, pz, E) [GeV] of one particle, written out: mT = sqrt(pT² + m²), E = mT cosh y, …"""
    mt = math.sqrt(pt**2 + mass**2)
    return [pt * math.cos(phi), pt * math.sin(phi), mt * math.sinh(rapidity), mt * math.cosh(rapidity)]


def random_jets(n_jets: int, seed: int = 0, width: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Jets of 5–``width`` particles (pT = 0.5 GeV + Exp(10 GeV)) around a random axis, zero-padded."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, width + 1, n_jets)
    real = np.arange(width) < counts[:, None]
    n = int(real.sum())
    x = np.zeros((n_jets, width, 4))
    x[..., 0][real] = rng.exponential(10, n) + 0.5
    x[..., 1][real] = rng.normal(0, 0.15, n) + np.repeat(rng.uniform(-1.5, 1.5, n_jets), counts)
    x[..., 2][real] = rng.normal(0, 0.15, n) + np.repeat(rng.uniform(0, 2 * np.pi, n_jets), counts)
    x[..., 3][real] = rng.choice([22, 211, -211, 321, -321, 130, 2112, -2112, 2212, -2212, 11, -13], n)
    return x, rng.integers(0, 2, n_jets).astype(np.float64)


# ------------------------------------------------------------------------------------------ four-vectors

@pytest.mark.parametrize(("compressed", "y_dtype"), [(True, np.float64), (False, np.int64)],
                         ids=["savez_compressed", "savez"])
def test_four_vectors_equal_the_hand_computation(tmp_path, compressed, y_dtype):
    path = tmp_path / "QG_jets.npz"
    write_qg(path, HAND_X, HAND_Y.astype(y_dtype), compressed=compressed)
    assert detect_format(path) == "qg"
    info = source_info("auto", path)
    assert (info.n_jets, info.classes) == (3, ("gluon", "quark")) and QG_CLASSES == info.classes
    chunk = read_chunk("qg", path, 0, 3)
    assert chunk.offsets.tolist() == [0, 2, 3, 6]  # padding dropped
    assert chunk.labels.tolist() == [0, 1, 1] and chunk.labels.dtype == np.int64
    expected = [by_hand(10.0, 0.5, 1.0, 0.0), by_hand(3.0, -1.2, 4.0, PION_MASS),  # γ, π+
                by_hand(20.0, 0.1, -0.3, PION_MASS),  # π-
                by_hand(5.0, 0.2, 6.5, 0.49761), by_hand(2.0, 0.3, 6.4, 0.93957),  # K0L, n
                by_hand(1.0, 0.25, 6.45, 0.93827)]  # p̄
    got = np.stack([chunk.px, chunk.py, chunk.pz, chunk.energy], axis=1)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-14)
    photon = got[0]  # massless: E = |p| = pT cosh y
    assert photon[3] == pytest.approx(10.0 * math.cosh(0.5), rel=1e-15)
    pion = got[1]
    pion_mass = math.sqrt(pion[3] ** 2 - pion[0] ** 2 - pion[1] ** 2 - pion[2] ** 2)
    assert pion_mass == pytest.approx(PION_MASS, rel=1e-9)


def test_masses_follow_the_absolute_pdg_id():
    mass, known = masses(np.array([22.0, 211.0, -211.0, 2212.0, -2212.0, 130.0, 11.0, 999.0, 211.5, 0.0]))
    assert known.tolist() == [True] * 7 + [False] * 3  # 0 is the padding id, never a real particle's
    np.testing.assert_array_equal(mass[:7], [0.0, PION_MASS, PION_MASS, 0.93827, 0.93827, 0.49761, 5.11e-4])
    assert 0 not in PARTICLE_MASSES and PARTICLE_MASSES[321] == 0.49368


def test_invariant_masses_of_random_jets_are_the_table_masses(tmp_path):
    x, y = random_jets(40)
    path = tmp_path / "QG_jets_1.npz"
    write_qg(path, x, y)
    chunk = read_chunk("qg", path, 0, 40)
    real = x[..., 0] > 0
    m2 = chunk.energy**2 - chunk.px**2 - chunk.py**2 - chunk.pz**2
    table = np.array([PARTICLE_MASSES[abs(int(i))] for i in x[..., 3][real]])
    np.testing.assert_allclose(np.sqrt(np.clip(m2, 0, None)), table, atol=1e-6)
    np.testing.assert_allclose(np.hypot(chunk.px, chunk.py), x[..., 0][real], rtol=1e-14)
    np.testing.assert_array_equal(np.diff(chunk.offsets), real.sum(axis=1))


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize(("start", "stop"), [(0, 50), (17, 41), (23, 23), (49, 50)])
def test_entry_ranges_read_the_same_jets_as_the_whole_file(tmp_path, compressed, start, stop):
    x, y = random_jets(50, seed=3)
    path = tmp_path / "QG_jets_2.npz"
    write_qg(path, x, y, compressed=compressed)
    whole = read_chunk("qg", path, 0, 50)
    part = read_chunk("qg", path, start, stop)
    assert (part.start, part.stop, part.n_jets, part.path) == (start, stop, stop - start, str(path))
    lo, hi = whole.offsets[start], whole.offsets[stop]
    np.testing.assert_array_equal(part.offsets, whole.offsets[start:stop + 1] - lo)
    for name in ("px", "py", "pz", "energy"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[lo:hi])
    np.testing.assert_array_equal(part.labels, y[start:stop])


@pytest.mark.parametrize(("start", "stop"), [(0, 4), (-1, 2), (2, 1)])
def test_entry_ranges_outside_the_file_are_refused(tmp_path, start, stop):
    write_qg(tmp_path / "a.npz", HAND_X, HAND_Y)
    with pytest.raises(InputError, match=rf"entry range \[{start}, {stop}\) is not within the file's 3 jets"):
        read_chunk("qg", tmp_path / "a.npz", start, stop)


# ------------------------------------------------------------------------------------------ bad input

def checked(path, start: int, stop: int, on_bad_jet: str = "error"):
    """Read jets [start, stop) and apply the bad-jet rule every reader's jets go through."""
    return check_chunk(read_chunk("qg", path, start, stop), on_bad_jet)


def test_unknown_pdg_id_names_file_entry_particle_and_id(tmp_path):
    x, y = random_jets(8, seed=1)
    x[5, 1, 3] = 999.0
    x[6, 0, 3] = 211.5  # not an integer: unknown too
    path = tmp_path / "QG_jets_3.npz"
    write_qg(path, x, y)
    assert checked(path, 0, 5)[0].n_jets == 5  # jets before the bad one read fine
    with pytest.raises(InputError, match=r"entry 5: particle 1 has PDG id 999, which has no known mass "
                                         r"\(known \|ids\|: \[1, 2, .*\]\); 2 bad jet\(s\) in "
                                         r"entries 2-7") as err:
        checked(path, 2, 8)
    assert err.value.entry == 5 and err.value.path == str(path)
    with pytest.raises(InputError, match="particle 0 has PDG id 211.5"):
        checked(path, 6, 7)
    good, n_skipped = checked(path, 0, 8, on_bad_jet="skip")
    assert n_skipped == 2 and good.n_jets == 6
    np.testing.assert_array_equal(good.labels, np.delete(y, [5, 6]))


@pytest.mark.parametrize(("where", "value", "message"), [
    ((4, 2, 1), np.nan, r"particle 2 has a non-finite value \(pT, y, phi, PDG id\) = \[.*nan"),
    ((4, 0, 0), np.nan, "particle 0 has a non-finite value"),  # NaN pT must not pass for padding
    ((4, 3, 2), np.inf, "particle 3 has a non-finite value"),
    ((4, 1, 0), -2.0, "particle 1 has negative pT -2 GeV"),
    ((4, 29, 0), np.nan, "particle 29 has a non-finite value"),  # NaN in a padding slot is not padding
])
def test_bad_particle_values_name_the_entry(tmp_path, where, value, message):
    x, y = random_jets(6, seed=2)
    x[where] = value
    path = tmp_path / "bad.npz"
    write_qg(path, x, y)
    with pytest.raises(InputError, match=message) as err:
        checked(path, 0, 6)
    assert err.value.entry == 4
    good, n_skipped = checked(path, 0, 6, on_bad_jet="skip")
    assert n_skipped == 1 and good.n_jets == 5 and np.isfinite(good.energy).all()


def test_labels_other_than_zero_or_one_name_the_entry(tmp_path):
    write_qg(tmp_path / "y.npz", HAND_X, np.array([0.0, 2.0, 1.0]))
    with pytest.raises(InputError, match=r"label y is 2.0, expected 0 \(gluon\) or 1 \(quark\)") as err:
        read_chunk("qg", tmp_path / "y.npz", 0, 3)
    assert err.value.entry == 1


@pytest.mark.parametrize(("arrays", "message"), [
    ({"X": HAND_X}, r"no array 'y'; the file holds \['X'\]; expected X \(jets, particles, 4\)"),
    ({"y": HAND_Y}, r"no array 'X'; the file holds \['y'\]"),
    ({"X": HAND_X[..., :3], "y": HAND_Y}, r"X is float64\[3, 4, 3\]; expected float X \(jets, particles, 4"),
    ({"X": HAND_X[:, :, 0], "y": HAND_Y}, r"X is float64\[3, 4\]"),
    ({"X": HAND_X, "y": HAND_Y[:2]}, r"y is int64\[2\] while X holds 3 jets"),
    ({"X": HAND_X.astype(np.int64), "y": HAND_Y}, r"X is int64\[3, 4, 4\]; expected float"),
    ({"X": HAND_X, "y": np.array([0, 1, None], dtype=object)}, "array 'y' holds Python objects"),
    ({"X": np.asfortranarray(HAND_X), "y": HAND_Y}, "array 'X' is stored in Fortran order"),
])
def test_wrong_arrays_are_refused_with_the_layout(tmp_path, arrays, message):
    path = tmp_path / "wrong.npz"
    np.savez_compressed(path, **arrays)
    for call in (lambda: source_info("qg", path), lambda: read_chunk("qg", path, 0, 1)):
        with pytest.raises(InputError, match=message) as err:
            call()
        assert err.value.path == str(path) and "QG_jets" in err.value.hint


def test_detect_format_needs_x_and_y_in_an_npz(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.ones(3), X=np.ones((3, 2, 4)))
    with pytest.raises(InputError, match=r"an npz file with arrays \['X', 'a'\]; the only npz layout read is "
                                         r"the quark-gluon one, with arrays \['X', 'y'\]"):
        detect_format(tmp_path / "other.npz")
    write_qg(tmp_path / "jets.bin", HAND_X, HAND_Y)  # told by content, not by name
    assert detect_format(tmp_path / "jets.bin") == "qg"
    assert "qg" in FORMATS
    with pytest.raises(InputError, match="generic reader does not read.*--format qg"):
        source_info("generic", tmp_path / "jets.bin", GenericOptions(px="X", py="X", pz="X", energy="X"))


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_and_garbage_files(tmp_path, fraction):
    x, y = random_jets(50, seed=4)
    good = tmp_path / "good.npz"
    write_qg(good, x, y)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * fraction)])
    calls = (lambda: detect_format(cut), lambda: source_info("qg", cut), lambda: read_chunk("qg", cut, 0, 50))
    for call in calls:
        with pytest.raises(InputError, match="cannot (open|read)") as err:
            call()
        assert err.value.path == str(cut)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(InputError, match="cannot open as npz"):
        source_info("qg", garbage)


def test_a_member_shorter_than_its_header_says_is_refused(tmp_path):
    path = tmp_path / "short.npz"
    header = np.lib.format.header_data_from_array_1_0(HAND_X)
    header["shape"] = (5, 4, 4)  # two rows more than the data hold
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("X.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(HAND_X.tobytes())
        with archive.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(5))
    assert source_info("qg", path).n_jets == 5
    assert read_chunk("qg", path, 0, 3).n_jets == 3
    with pytest.raises(InputError, match="array 'X' ends before row 5: the file is truncated"):
        read_chunk("qg", path, 2, 5)


# ------------------------------------------------------------------------------------------ end to end

def test_cli_cluster_writes_shards_with_gluon_and_quark_classes(tmp_path):
    x, y = random_jets(60, seed=5)
    path = tmp_path / "QG_jets.npz"
    write_qg(path, x, y)
    out = tmp_path / "shards"
    result = CliRunner().invoke(main, ["cluster", str(path), "--out", str(out), "--workers", "0",
                                       "--no-progress", "--chunk-size", "40"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.n_jets == 60 and list(manifest.classes) == ["gluon", "quark"]
    assert [s.n_jets for s in manifest.shards] == [40, 20]
    counts = np.sum([s.class_counts for s in manifest.shards], axis=0).tolist()
    assert counts == [int((y == 0).sum()), int((y == 1).sum())]
    for record in manifest.shards:
        assert validate_shard(out / record.file, deep=True) == []
