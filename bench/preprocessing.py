"""Benchmark of ``jjepa-preprocess cluster`` against FastJet, side by side in one run.

Measures, on simulated Pythia top and QCD jets in the JetClass ROOT layout:

* ours, end to end (read ROOT + check + Numba clustering + features + write shards + sha256),
  in one process on one core;
* our Numba clustering alone, on the same jets in memory;
* FastJet's vectorised awkward clustering alone (``fastjet.ClusterSequence`` on the jagged
  array + constituent indices), in memory — the best FastJet can do here;
* the reference design: a per-jet Python loop building ``fastjet.PseudoJet`` objects;
* ours end to end with 1 and 2 local Dask workers.

Prints one JSON line. Inputs are generated once and cached outside the repository
(``--cache``, default ``~/.cache/jjepa-bench``); the first run simulates them (minutes per
10,000 jets). Example: ``python bench/preprocessing.py --n-jets 100000``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from jjepa.common.schema import ClusterConfig
from jjepa.preprocess.cluster import cluster, cluster_fastjet
from jjepa.preprocess.driver import ClusterRun, run_cluster
from jjepa.preprocess.features import build_features
from jjepa.preprocess.readers import read_chunk
from jjepa.preprocess.simulate import SimConfig, simulate_to_file


def inputs(cache: Path, n_jets: int) -> list[Path]:
    """Half top, half QCD jets in JetClass ROOT files under ``cache``, simulated if missing."""
    cache.mkdir(parents=True, exist_ok=True)
    files = []
    for process, name, seed in (("top", "TTBar_000.root", 1), ("qcd", "ZJetsToNuNu_000.root", 2)):
        path = cache / name
        if not path.exists():
            logging.info("simulating %d %s jets into %s (once)", n_jets // 2, process, path)
            simulate_to_file(SimConfig(process=process, n_jets=n_jets // 2, seed=seed), path, "jetclass",
                             workers=os.cpu_count() or 1)
        files.append(path)
    return files


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def end_to_end(files, out: Path, n_jets: int, chunk_size: int, scheduler: str | None = None) -> float:
    """Seconds for a full ``cluster`` run of ``n_jets`` jets per file into a fresh folder.

    Without ``scheduler`` it runs in this process (one core); with one, on that Dask cluster.
    """
    shutil.rmtree(out, ignore_errors=True)
    run = ClusterRun(inputs=tuple(map(str, files)), out=str(out), workers=0, scheduler=scheduler,
                     chunk_size=chunk_size, max_jets=n_jets, progress=False)
    return timed(run_cluster, run)


def on_dask(files, out: Path, n_jets: int, chunk_size: int, workers: int) -> float:
    """Seconds for the same run on a local Dask cluster of ``workers`` processes, started and warmed
    (Numba kernels loaded) before the clock starts, as a long-lived cluster would be."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        end_to_end(files, out / "warm", 2_000, 1_000, cluster.scheduler_address)
        return end_to_end(files, out / "timed", n_jets, chunk_size, cluster.scheduler_address)


def pseudojet_loop(chunk, radius: float, n_subjets: int = 20, n_particles: int = 30) -> np.ndarray:
    """The reference design: per jet, one ``fastjet.PseudoJet`` per constituent, one ClusterSequence,
    then the subjet and constituent features read off the PseudoJets in Python."""
    import fastjet

    jet_def = fastjet.JetDefinition(fastjet.cambridge_algorithm, radius)
    out = np.zeros((chunk.n_jets, n_subjets, n_particles, 4), dtype=np.float32)
    for j in range(chunk.n_jets):
        lo, hi = chunk.offsets[j], chunk.offsets[j + 1]
        particles = [fastjet.PseudoJet(float(chunk.px[k]), float(chunk.py[k]), float(chunk.pz[k]),
                                       float(chunk.energy[k])) for k in range(lo, hi)]
        jet = fastjet.join(particles)
        sequence = fastjet.ClusterSequence(particles, jet_def)
        subjets = fastjet.sorted_by_pt(sequence.inclusive_jets())[:n_subjets]
        for s, subjet in enumerate(subjets):
            for c, p in enumerate(fastjet.sorted_by_pt(subjet.constituents())[:n_particles]):
                out[j, s, c] = (p.pt(), p.eta() - jet.eta(), np.sin(0.5 * jet.delta_phi_to(p)), p.e())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-jets", type=int, default=100_000, help="jets in all (half top, half QCD)")
    parser.add_argument("--fastjet-jets", type=int, default=20_000, help="jets for FastJet's vectorised timing")
    parser.add_argument("--loop-jets", type=int, default=2_000, help="jets for the per-jet PseudoJet loop")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="jets per task / shard")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "jjepa-bench")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where shards are written (default: the system temp dir; /dev/shm takes the disk out)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import distributed  # noqa: F401 - configures its loggers on import; quiet them afterwards

    logging.getLogger("distributed").setLevel(logging.ERROR)

    files = inputs(args.cache, args.n_jets)
    per_file = args.n_jets // 2
    work = Path(tempfile.mkdtemp(prefix="jjepa-bench-", dir=args.workdir))
    try:
        # Warm-up: Numba kernels load from cache / compile outside the timed runs.
        end_to_end(files, work / "warm", 500, args.chunk_size)

        t_ours = end_to_end(files, work / "serial", per_file, args.chunk_size)
        sample = read_chunk("jetclass", str(files[0]), 0, args.fastjet_jets // 2, None)
        sample_qcd = read_chunk("jetclass", str(files[1]), 0, args.fastjet_jets // 2, None)
        arrays = [np.concatenate([getattr(sample, k), getattr(sample_qcd, k)]) for k in ("px", "py", "pz", "energy")]
        offsets = np.concatenate([sample.offsets, sample.offsets[-1] + sample_qcd.offsets[1:]])
        n_sample = len(offsets) - 1
        t_numba = timed(cluster, *arrays, offsets)
        t_fastjet = timed(cluster_fastjet, *arrays, offsets)
        loop = read_chunk("jetclass", str(files[0]), 0, args.loop_jets, None)
        start = time.perf_counter()
        reference = pseudojet_loop(loop, 0.2)
        t_loop = time.perf_counter() - start
        # Same work, same answer: our features equal the reference loop's.
        ours = build_features(loop.px, loop.py, loop.pz, loop.energy, loop.offsets,
                              *cluster(loop.px, loop.py, loop.pz, loop.energy, loop.offsets), loop.labels,
                              ClusterConfig())
        np.testing.assert_allclose(ours.particles, reference, rtol=1e-4, atol=1e-4)
        t_one = on_dask(files, work / "dask1", per_file, args.chunk_size, 1)
        t_two = on_dask(files, work / "dask2", per_file, args.chunk_size, 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = 2 * per_file
    rates = {
        "ours_end_to_end_jets_per_s": n / t_ours,
        "ours_numba_clustering_alone_jets_per_s": n_sample / t_numba,
        "fastjet_vectorised_clustering_alone_jets_per_s": n_sample / t_fastjet,
        "pseudojet_loop_jets_per_s": args.loop_jets / t_loop,
        "dask_1_worker_jets_per_s": n / t_one,
        "dask_2_workers_jets_per_s": n / t_two,
    }
    mean_constituents = float(np.diff(offsets).mean())
    result = {
        "benchmark": "preprocess",
        "n_jets": n,
        "mean_constituents": round(mean_constituents, 1),
        "chunk_size": args.chunk_size,
        **{k: round(v, 1) for k, v in rates.items()},
        "ratio_end_to_end_vs_fastjet_alone": round(rates["ours_end_to_end_jets_per_s"]
                                                   / rates["fastjet_vectorised_clustering_alone_jets_per_s"], 2),
        "ratio_end_to_end_vs_pseudojet_loop": round(rates["ours_end_to_end_jets_per_s"]
                                                    / rates["pseudojet_loop_jets_per_s"], 1),
        "ratio_numba_vs_fastjet_clustering": round(rates["ours_numba_clustering_alone_jets_per_s"]
                                                   / rates["fastjet_vectorised_clustering_alone_jets_per_s"], 2),
        "ratio_2_vs_1_workers": round(t_one / t_two, 2),
        "workdir": str(args.workdir or tempfile.gettempdir()),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
