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
10,000 jets). Example: ``python bench/preprocess.py --n-jets 100000``.
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
from jjepa.preprocess.cluster import cluster, cluster_fastjet
from jjepa.preprocess.driver import ClusterRun, run_cluster
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


def end_to_end(files, out: Path, workers: int, n_jets: int) -> float:
    """Seconds for a full ``cluster`` run of ``n_jets`` jets per file into a fresh folder."""
    shutil.rmtree(out, ignore_errors=True)
    run = ClusterRun(inputs=tuple(map(str, files)), out=str(out), workers=workers, chunk_size=25_000,
                     max_jets=n_jets, progress=False)
    return timed(run_cluster, run)


def pseudojet_loop(chunk, radius: float) -> None:
    """The reference design: one ``fastjet.PseudoJet`` per constituent, one ClusterSequence per jet."""
    import fastjet

    jet_def = fastjet.JetDefinition(fastjet.cambridge_algorithm, radius)
    for j in range(chunk.n_jets):
        lo, hi = chunk.offsets[j], chunk.offsets[j + 1]
        particles = [fastjet.PseudoJet(float(chunk.px[k]), float(chunk.py[k]), float(chunk.pz[k]),
                                       float(chunk.energy[k])) for k in range(lo, hi)]
        sequence = fastjet.ClusterSequence(particles, jet_def)
        for subjet in sequence.inclusive_jets():
            subjet.constituents()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-jets", type=int, default=100_000, help="jets in all (half top, half QCD)")
    parser.add_argument("--fastjet-jets", type=int, default=20_000, help="jets for FastJet's vectorised timing")
    parser.add_argument("--loop-jets", type=int, default=2_000, help="jets for the per-jet PseudoJet loop")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "jjepa-bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    files = inputs(args.cache, args.n_jets)
    per_file = args.n_jets // 2
    work = Path(tempfile.mkdtemp(prefix="jjepa-bench-"))
    try:
        # Warm-up: Numba kernels load from cache / compile outside the timed runs.
        end_to_end(files, work / "warm", 0, 500)

        t_ours = end_to_end(files, work / "serial", 0, per_file)
        sample = read_chunk("jetclass", str(files[0]), 0, args.fastjet_jets // 2, None)
        sample_qcd = read_chunk("jetclass", str(files[1]), 0, args.fastjet_jets // 2, None)
        arrays = [np.concatenate([getattr(sample, k), getattr(sample_qcd, k)]) for k in ("px", "py", "pz", "energy")]
        offsets = np.concatenate([sample.offsets, sample.offsets[-1] + sample_qcd.offsets[1:]])
        n_sample = len(offsets) - 1
        t_numba = timed(cluster, *arrays, offsets)
        t_fastjet = timed(cluster_fastjet, *arrays, offsets)
        loop = read_chunk("jetclass", str(files[0]), 0, args.loop_jets, None)
        t_loop = timed(pseudojet_loop, loop, 0.2)
        t_one = end_to_end(files, work / "dask1", 1, per_file)
        t_two = end_to_end(files, work / "dask2", 2, per_file)
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
        **{k: round(v, 1) for k, v in rates.items()},
        "ratio_end_to_end_vs_fastjet_alone": round(rates["ours_end_to_end_jets_per_s"]
                                                   / rates["fastjet_vectorised_clustering_alone_jets_per_s"], 2),
        "ratio_end_to_end_vs_pseudojet_loop": round(rates["ours_end_to_end_jets_per_s"]
                                                    / rates["pseudojet_loop_jets_per_s"], 1),
        "ratio_numba_vs_fastjet_clustering": round(rates["ours_numba_clustering_alone_jets_per_s"]
                                                   / rates["fastjet_vectorised_clustering_alone_jets_per_s"], 2),
        "ratio_2_vs_1_workers": round(t_one / t_two, 2),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
