"""Simulated top and QCD jets with Pythia 8 (``pythia8mc``), for the demo, tests and benchmarks.

pp collisions at 14 TeV; ``top``: tt̄ with hadronic W decays, jets truth-matched to the top and
its three decay quarks; ``qcd``: hard QCD 2 → 2. Final-state particles (LHC convention: cτ > 10 mm
stays undecayed; neutrinos dropped as invisible) are clustered into anti-kT R=0.8 jets with
FastJet; jets with pT in [pt_min, pt_max] GeV and |η| < abs_eta_max are kept. Events come from
``Pythia.nextBatch`` as awkward arrays and are clustered a batch at a time.

Reproducible: chunk k of ``chunk_size`` jets is generated with seed ``seed + k`` alone, so any
number of worker processes gives the same jets in the same order.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

import awkward as ak
import numpy as np
from jjepa.preprocess.readers.base import JetChunk, offsets_from_counts

log = logging.getLogger(__name__)

PROCESSES = ("top", "qcd")
_NEUTRINOS = (12, 14, 16)
_MAX_SEED = 900_000_000


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Energies and momenta in GeV.

    Attributes:
        process: ``top`` or ``qcd``.
        n_jets: jets to produce.
        seed: base seed; chunk k uses ``seed + k``.
        pt_min, pt_max, abs_eta_max, jet_radius: the jet selection (anti-kT R).
        pthat_min, pthat_max: Pythia's hard-process pT window. Wider than the jet window so that
            radiation moving jets in and out of it is mostly kept (a window equal to the jet
            window loses about a third of the jets); a still wider one costs more events per jet.
        mpi: multiple parton interactions (off, as in the Top Tagging dataset, and faster).
        ecm: centre-of-mass energy.
        chunk_size: jets per independently seeded chunk.
        events_per_batch: events per ``nextBatch`` call.
    """

    process: str
    n_jets: int
    seed: int = 1
    pt_min: float = 550.0
    pt_max: float = 650.0
    abs_eta_max: float = 2.0
    jet_radius: float = 0.8
    pthat_min: float = 450.0
    pthat_max: float = 800.0
    mpi: bool = False
    ecm: float = 14000.0
    chunk_size: int = 500
    events_per_batch: int = 50

    def __post_init__(self):
        if self.process not in PROCESSES:
            raise ValueError(f"process must be one of {PROCESSES}, not {self.process!r}")
        if self.n_jets < 1 or self.chunk_size < 1:
            raise ValueError("n_jets and chunk_size must be positive")
        if not 0 <= self.seed <= _MAX_SEED - self.n_jets // self.chunk_size - 1:
            raise ValueError(f"seed must be in [0, {_MAX_SEED}) for every chunk (seed + chunk index)")


def _pythia(config: SimConfig, seed: int):
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    settings = [
        f"Beams:eCM = {config.ecm}",
        f"PhaseSpace:pTHatMin = {config.pthat_min}",
        f"PhaseSpace:pTHatMax = {config.pthat_max}",
        f"PartonLevel:MPI = {'on' if config.mpi else 'off'}",
        "ParticleDecays:limitTau0 = on",
        "ParticleDecays:tau0Max = 10",
        "Random:setSeed = on",
        f"Random:seed = {seed}",
        "Next:numberCount = 0",
        "Print:quiet = on",
    ]
    if config.process == "top":
        settings += ["Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off", "24:onIfAny = 1 2 3 4 5"]
    else:
        settings += ["HardQCD:all = on"]
    for line in settings:
        pythia.readString(line)
    if not pythia.init():
        raise RuntimeError("Pythia initialisation failed")
    return pythia


def _eta_phi(px, py, pz):
    pt = np.hypot(px, py)
    return np.arcsinh(pz / np.maximum(pt, 1e-12)), np.arctan2(py, px)


def _delta_r(eta1, phi1, eta2, phi2):
    dphi = (phi1 - phi2 + math.pi) % (2 * math.pi) - math.pi
    return np.hypot(eta1 - eta2, dphi)


def _last_copy(i: int, pid: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> int:
    """Follow Pythia's carbon copies (one daughter with the same id) to the last one."""
    while d1[i] > 0 and d1[i] == d2[i] and pid[d1[i]] == pid[i]:
        i = d1[i]
    return i


def _top_partons(event) -> list[np.ndarray]:
    """(η, φ) of each top (last copy) and of its b and the two quarks of its W: arrays (4, 2)."""
    prt = event["prt"]
    pid = ak.to_numpy(prt["id"])
    d1, d2 = ak.to_numpy(prt["daughter1"]), ak.to_numpy(prt["daughter2"])
    p = prt["p"]
    eta, phi = _eta_phi(ak.to_numpy(p["px"]), ak.to_numpy(p["py"]), ak.to_numpy(p["pz"]))
    tops = []
    for t in np.flatnonzero(np.abs(pid) == 6):
        if _last_copy(t, pid, d1, d2) != t or d1[t] <= 0:
            continue
        daughters = np.arange(d1[t], max(d2[t], d1[t]) + 1)
        b = [d for d in daughters if abs(pid[d]) == 5]
        w = [d for d in daughters if abs(pid[d]) == 24]
        if not b or not w:
            continue
        wl = _last_copy(w[0], pid, d1, d2)
        quarks = [d for d in range(d1[wl], max(d2[wl], d1[wl]) + 1) if 1 <= abs(pid[d]) <= 5]
        if len(quarks) != 2:
            continue
        idx = [t, b[0], *quarks]
        tops.append(np.stack([eta[idx], phi[idx]], axis=1))
    return tops


def _select_jets(events, config: SimConfig):
    """Anti-kT jets of a batch in the pT/η window: (event index, jet (η, φ), constituents pT-ordered)."""
    import fastjet

    prt = events["prt"]
    abs_id = abs(prt["id"])
    invisible = (abs_id == _NEUTRINOS[0]) | (abs_id == _NEUTRINOS[1]) | (abs_id == _NEUTRINOS[2])
    final = prt[(prt["status"] > 0) & ~invisible]
    particles = ak.zip({"px": final["p"]["px"], "py": final["p"]["py"], "pz": final["p"]["pz"],
                        "E": final["p"]["e"]})
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, config.jet_radius)
    sequence = fastjet.ClusterSequence(particles, jet_def)
    jets = sequence.inclusive_jets(min_pt=config.pt_min)
    constituents = sequence.constituents(min_pt=config.pt_min)
    pt = np.hypot(jets["px"], jets["py"])
    eta = np.arcsinh(jets["pz"] / pt)
    keep = (pt <= config.pt_max) & (np.abs(eta) < config.abs_eta_max)
    event_index = ak.flatten(ak.broadcast_arrays(ak.local_index(jets, axis=0), jets["px"])[0][keep])
    return ak.to_numpy(event_index), jets[keep], constituents[keep]


def _simulate_chunk(config: SimConfig, index: int, n_jets: int) -> JetChunk:
    """Jets of chunk ``index`` (seed ``config.seed + index``), exactly ``n_jets`` of them."""
    pythia = _pythia(config, config.seed + index)
    parts: list[ak.Array] = []
    total = 0
    while total < n_jets:
        events = pythia.nextBatch(config.events_per_batch)
        event_index, jets, constituents = _select_jets(events, config)
        jets = ak.flatten(jets)
        constituents = ak.flatten(constituents, axis=1)
        if config.process == "top" and len(jets):
            jet_eta, jet_phi = _eta_phi(ak.to_numpy(jets["px"]), ak.to_numpy(jets["py"]), ak.to_numpy(jets["pz"]))
            matched = np.zeros(len(jets), dtype=bool)
            partons = {e: _top_partons(events[int(e)]) for e in np.unique(event_index)}
            for k, e in enumerate(event_index):
                matched[k] = any(np.all(_delta_r(jet_eta[k], jet_phi[k], top[:, 0], top[:, 1]) < config.jet_radius)
                                 for top in partons[e])
            constituents = constituents[matched]
        parts.append(constituents)
        total += len(constituents)
    jets = ak.concatenate(parts)[:n_jets]
    pt = np.hypot(jets["px"], jets["py"])
    jets = jets[ak.argsort(pt, axis=1, ascending=False)]
    flat = {k: ak.to_numpy(ak.flatten(jets[k])).astype(np.float64) for k in ("px", "py", "pz", "E")}
    label = 1 if config.process == "top" else 0
    return JetChunk(px=flat["px"], py=flat["py"], pz=flat["pz"], energy=flat["E"],
                    offsets=offsets_from_counts(ak.to_numpy(ak.num(jets))), labels=np.full(n_jets, label, np.int64),
                    path=f"pythia8:{config.process}:seed={config.seed}", start=0, stop=n_jets)


def _concat(chunks: list[JetChunk], path: str) -> JetChunk:
    counts = np.concatenate([np.diff(c.offsets) for c in chunks])
    cat = lambda name: np.concatenate([getattr(c, name) for c in chunks])  # noqa: E731
    return JetChunk(px=cat("px"), py=cat("py"), pz=cat("pz"), energy=cat("energy"),
                    offsets=offsets_from_counts(counts), labels=cat("labels"), path=path, start=0,
                    stop=len(counts))


def simulate_jets(config: SimConfig, workers: int = 1, progress: bool = True) -> JetChunk:
    """Simulate ``config.n_jets`` jets; labels 1 for ``top``, 0 for ``qcd``.

    Args:
        config: what to simulate.
        workers: processes; the output does not depend on it.
        progress: show a progress bar over jets.

    Returns:
        A ``JetChunk`` of the jets' constituents [GeV], pT-ordered within each jet.
    """
    from tqdm.auto import tqdm

    sizes = [min(config.chunk_size, config.n_jets - s) for s in range(0, config.n_jets, config.chunk_size)]
    chunks: list[JetChunk] = []
    with tqdm(total=config.n_jets, unit="jet", disable=not progress, desc=f"simulate {config.process}") as bar:
        if workers <= 1:
            for k, size in enumerate(sizes):
                chunks.append(_simulate_chunk(config, k, size))
                bar.update(size)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for chunk in pool.map(_simulate_chunk, [config] * len(sizes), range(len(sizes)), sizes):
                    chunks.append(chunk)
                    bar.update(chunk.n_jets)
    return _concat(chunks, f"pythia8:{config.process}:seed={config.seed}")


def simulate_to_file(config: SimConfig, out, fmt: str = "jetclass", workers: int = 1, progress: bool = True) -> None:
    """Simulate and write in the JetClass ROOT (``jetclass``) or Top Tagging HDF5 (``toptagging``) layout.

    JetClass labels: top → ``Tbqq``, qcd → ``QCD``; Top Tagging: ``is_signal_new`` 1 / 0.
    """
    from jjepa.preprocess.rawformats import write_jetclass_root, write_toptagging_h5
    from jjepa.preprocess.readers.base import JETCLASS_CLASSES

    chunk = simulate_jets(config, workers=workers, progress=progress)
    if fmt == "jetclass":
        index = JETCLASS_CLASSES.index("Tbqq" if config.process == "top" else "QCD")
        write_jetclass_root(out, replace(chunk, labels=np.full(chunk.n_jets, index, np.int64)))
    elif fmt == "toptagging":
        write_toptagging_h5(out, chunk)
    else:
        raise ValueError(f"format must be jetclass or toptagging, not {fmt!r}")
    log.info("wrote %d %s jets to %s", chunk.n_jets, config.process, out)


def simulate_toptagging_mix(top: SimConfig, qcd: SimConfig, out, shuffle_seed: int, workers: int = 1,
                            progress: bool = True) -> None:
    """Simulate top and QCD jets and write them as one Top Tagging HDF5 file, mixed in a seeded order.

    The real Top Tagging files hold both classes interleaved (``is_signal_new`` 1 / 0); so does this one.
    """
    from jjepa.preprocess.rawformats import write_toptagging_h5

    both = _concat([simulate_jets(top, workers=workers, progress=progress),
                    simulate_jets(qcd, workers=workers, progress=progress)], f"pythia8:top+qcd:seed={shuffle_seed}")
    order = np.random.default_rng(shuffle_seed).permutation(both.n_jets)
    counts = np.diff(both.offsets)[order]
    offsets = offsets_from_counts(counts)
    particles = np.arange(offsets[-1]) + np.repeat(both.offsets[:-1][order] - offsets[:-1], counts)
    mixed = JetChunk(px=both.px[particles], py=both.py[particles], pz=both.pz[particles],
                     energy=both.energy[particles], offsets=offsets, labels=both.labels[order],
                     path=both.path, start=0, stop=both.n_jets)
    write_toptagging_h5(out, mixed)
    log.info("wrote %d top and %d QCD jets to %s", top.n_jets, qcd.n_jets, out)

