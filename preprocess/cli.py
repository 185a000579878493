"""``jjepa-preprocess``: simulate jets, cluster them into subjet shards, inspect the shards."""

from __future__ import annotations

import os
from pathlib import Path

import click
import yaml
from jjepa.common.cli_utils import reports_errors, setup_logging
from jjepa.common.errors import JJepaError
from jjepa.common.schema import ALGORITHMS, ClusterConfig
from jjepa.preprocess.readers import FORMATS
from jjepa.preprocess.readers.base import GenericOptions
from jjepa.preprocess.task import BACKENDS
from jjepa.preprocess.validate import ON_BAD_JET


def _default_workers(workers: int | None) -> int:
    return (os.cpu_count() or 1) if workers is None else workers


_BRANCH_KEYS = ("tree", "px", "py", "pz", "pt", "eta", "phi", "energy", "label")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
def main(verbose: int) -> None:
    """Prepare jets for J-JEPA: simulate, recluster into subjets, inspect shards."""
    setup_logging(verbose)


def _generic_options(branches: str | None, classes: str | None, **names) -> GenericOptions:
    """Branch names from a YAML file (``--branches``), overridden by the individual options."""
    values: dict = {}
    if branches:
        loaded = yaml.safe_load(Path(branches).read_text()) or {}
        unknown = set(loaded) - set(_BRANCH_KEYS) - {"classes"}
        if unknown:
            raise JJepaError(f"{branches}: unknown keys {sorted(unknown)}; allowed: {list(_BRANCH_KEYS) + ['classes']}")
        values.update(loaded)
    values.update({k: v for k, v in names.items() if v is not None})
    if classes:
        values["classes"] = classes.split(",")
    values["classes"] = tuple(values.get("classes", ()))
    return GenericOptions(**values)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder for shards.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto",
              help="Input layout; auto picks by extension and content.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default="ca", help="Subjet algorithm (inclusive, E-scheme).")
@click.option("--radius", type=float, default=0.2, help="Subjet radius R.")
@click.option("--n-subjets", type=int, default=20, help="S: subjets kept per jet (hardest in pT).")
@click.option("--n-particles", type=int, default=30, help="N: constituents kept per subjet (hardest in pT).")
@click.option("--chunk-size", type=int, default=25_000, help="Jets per task and per shard.")
@click.option("--backend", type=click.Choice(BACKENDS), default="numba",
              help="Clustering engine: the Numba kernel, or FastJet's vectorised interface.")
@click.option("--on-bad-jet", type=click.Choice(ON_BAD_JET), default="error",
              help="Jets with no constituents or non-finite/negative energies: stop with an error, or skip and count.")
@click.option("--workers", type=int, default=None,
              help="Local Dask worker processes [default: number of cores]; 0 runs in this process without Dask.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option("--resume", is_flag=True, help="Finish an interrupted run: redo only missing or damaged shards.")
@click.option("--force", is_flag=True, help="Delete shards already in --out and start over.")
@click.option("--max-jets", type=int, default=None, help="Use at most this many jets from each input file.")
@click.option("--tree", default=None, help="generic ROOT: tree name (default: the only TTree).")
@click.option("--px", default=None, help="generic: branch/dataset of constituent px [GeV].")
@click.option("--py", default=None, help="generic: branch/dataset of constituent py [GeV].")
@click.option("--pz", default=None, help="generic: branch/dataset of constituent pz [GeV].")
@click.option("--pt", default=None, help="generic: branch/dataset of constituent pT [GeV] (with --eta, --phi).")
@click.option("--eta", default=None, help="generic: branch/dataset of constituent pseudorapidity.")
@click.option("--phi", default=None, help="generic: branch/dataset of constituent φ [rad].")
@click.option("--energy", default=None, help="generic: branch/dataset of constituent energy [GeV].")
@click.option("--label", default=None, help="generic: branch/dataset of the integer class label (omit: unlabeled, −1).")
@click.option("--classes", default=None, help="generic: comma-separated class names, index = label.")
@click.option("--branches", type=click.Path(dir_okay=False, exists=True), default=None,
              help="generic: YAML file with the keys tree, px, py, pz, pt, eta, phi, energy, label, classes.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@reports_errors
def cluster(inputs, out, fmt, algorithm, radius, n_subjets, n_particles, chunk_size, backend, on_bad_jet, workers,
            scheduler, resume, force, max_jets, tree, px, py, pz, pt, eta, phi, energy, label, classes, branches,
            progress):
    """Recluster the jets of INPUTS (ROOT or HDF5) into subjets and write fixed-size HDF5 shards.

    Each jet is reclustered into inclusive subjets (Cambridge–Aachen, R=0.2 by default); the S
    hardest subjets and, in each, the N hardest constituents are kept as (pT, Δη, sin(Δφ/2), E)
    relative to the jet axis. One chunk of one file becomes one shard; manifest.json lists the
    complete shards with their sha256.

    \b
    Examples:
      jjepa-preprocess cluster data/raw/*.root --out data/shards/train --workers 2
      jjepa-preprocess cluster train.h5 --out shards/top-train          # Top Tagging HDF5
      jjepa-preprocess cluster run.root --format generic --tree Events \\
          --px pf_px --py pf_py --pz pf_pz --energy pf_e --label is_sig --out shards/
    """
    from jjepa.preprocess.driver import ClusterRun, run_cluster

    try:
        cluster_config = ClusterConfig(algorithm=algorithm, radius=radius, n_subjets=n_subjets, n_particles=n_particles)
    except ValueError as err:
        raise JJepaError(str(err)) from None
    options = _generic_options(branches, classes, tree=tree, px=px, py=py, pz=pz, pt=pt, eta=eta, phi=phi,
                               energy=energy, label=label)
    run = ClusterRun(inputs=tuple(inputs), out=out, fmt=fmt, cluster=cluster_config, options=options,
                     chunk_size=chunk_size, backend=backend, on_bad_jet=on_bad_jet,
                     workers=_default_workers(workers), scheduler=scheduler,
                     resume=resume, force=force, max_jets=max_jets, progress=progress)
    manifest = run_cluster(run)
    click.echo(f"{out}: {len(manifest.shards)} shard(s), {manifest.n_jets} jets")


@main.command()
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--check", is_flag=True, help="Also verify every shard's sha256 and contents against the schema.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@reports_errors
def inspect(folder, check, as_json):
    """Summarise a shard FOLDER: jets, classes, subjet and constituent multiplicities, config."""
    import json

    from jjepa.preprocess.inspect import format_summary, summarize

    summary = summarize(folder, check=check)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if summary.get("problems"):
        raise click.exceptions.Exit(1)


@main.command()
@click.option("--process", type=click.Choice(["top", "qcd"]), required=True,
              help="top: tt̄ with hadronic W decays, truth-matched; qcd: hard QCD.")
@click.option("--n-jets", type=int, required=True, help="Jets to generate.")
@click.option("--format", "fmt", type=click.Choice(["jetclass", "toptagging"]), default="jetclass",
              help="Output layout: JetClass ROOT or Top Tagging HDF5.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output file (.root or .h5).")
@click.option("--seed", type=int, default=1, help="Base seed; chunk k uses seed + k.")
@click.option("--workers", type=int, default=None, help="Processes [default: number of cores].")
@click.option("--pt-min", type=float, default=550.0, help="Jet pT window lower edge [GeV].")
@click.option("--pt-max", type=float, default=650.0, help="Jet pT window upper edge [GeV].")
@click.option("--abs-eta-max", type=float, default=2.0, help="Jet |η| cut.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@reports_errors
def simulate(process, n_jets, fmt, out, seed, workers, pt_min, pt_max, abs_eta_max, progress):
    """Generate anti-kT R=0.8 jets with Pythia 8 (pp, 14 TeV) and write them in a real dataset layout.

    Needs the `sim` extra (pip install -e ".[sim]"). Output is reproducible: the same seed gives
    the same file whatever the number of workers.
    """
    try:
        from jjepa.preprocess.simulate import SimConfig, simulate_to_file
    except ImportError as err:
        raise JJepaError(f"simulation needs the sim extra: pip install -e '.[sim]' ({err})") from None
    config = SimConfig(process=process, n_jets=n_jets, seed=seed, pt_min=pt_min, pt_max=pt_max,
                       abs_eta_max=abs_eta_max)
    simulate_to_file(config, out, fmt, workers=_default_workers(workers),
                     progress=progress)
    click.echo(f"{out}: {n_jets} {process} jets")
