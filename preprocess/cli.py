"""``jjepa-preprocess``: fetch public datasets or make the demo's, simulate jets, cluster them into subjet
shards, inspect the shards."""

from __future__ import annotations

import os
from pathlib import Path

import click
from jjepa.common.cli_utils import progress_option, reports_errors, setup_logging
from jjepa.common.errors import JJepaError
from jjepa.common.schema import ALGORITHMS, PARTICLE_DTYPES, ClusterConfig
from jjepa.preprocess.datasets import DEMO_DATASETS, PUBLIC_DATASETS, SPLITS
from jjepa.preprocess.driver import ClusterRun
from jjepa.preprocess.readers import FORMATS
from jjepa.preprocess.readers.base import GenericOptions
from jjepa.preprocess.simulate import SimConfig
from jjepa.preprocess.task import BACKENDS
from jjepa.preprocess.validate import ON_BAD_JET


def _default_workers(workers: int | None) -> int:
    """``workers``, or the cores this process may run on (a batch job's allocation, not the whole node)."""
    if workers is not None:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: Inputs ``cluster --dataset`` knows how to find: the demo, and what ``fetch`` downloads.
DATASET_LAYOUTS = (*DEMO_DATASETS, *PUBLIC_DATASETS)

#: The defaults the options show and use, read from the typed configs (never typed twice).
_CLUSTER = ClusterConfig()
_RUN = ClusterRun(inputs=(), out=".")
_SIM = SimConfig(process="top", n_jets=1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
def main(verbose: int) -> None:
    """Prepare jets for J-JEPA: fetch datasets (or make the demo's), simulate, recluster into subjets, inspect shards."""
    setup_logging(verbose)


def _generic_options(branches: str | None, classes: str | None, **names) -> GenericOptions:
    """Branch names from a YAML file (``--branches``), overridden by the individual options."""
    from jjepa.preprocess.branches import load_branches

    values: dict = load_branches(branches) if branches else {}
    values.update({k: v for k, v in names.items() if v is not None})
    if classes:
        values["classes"] = classes.split(",")
    values["classes"] = tuple(values.get("classes", ()))
    return GenericOptions(**values)


def _cluster_inputs(inputs, dataset, root, split, processes, max_files) -> tuple[str, ...]:
    """The files to cluster: INPUTS as given, or one split of a dataset laid out as ``fetch`` leaves it."""
    from jjepa.preprocess.datasets import split_files

    if dataset is None:
        stray = [flag for flag, value in (("--root", root), ("--split", split), ("--processes", processes),
                                          ("--max-files", max_files)) if value]
        if stray:
            raise JJepaError(f"{', '.join(stray)} given without --dataset: they choose the files of a dataset "
                             "(--dataset jetclass, toptagging, qg or demo); with INPUTS, leave them out")
        if not inputs:
            raise JJepaError("no input files: give INPUTS, or --dataset with --root and --split")
        return tuple(inputs)
    if inputs:
        raise JJepaError("give either INPUTS or --dataset, not both")
    if root is None or split is None:
        raise JJepaError("--dataset needs --root (where the dataset lives) and --split (train, val or test)")
    chosen = [p.strip() for p in processes.split(",") if p.strip()] if processes else None
    files = split_files(dataset, root, split, processes=chosen, max_files=max_files or None)
    return tuple(str(f) for f in files)


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder for shards.")
@click.option("--dataset", type=click.Choice(DATASET_LAYOUTS), default=None,
              help="Instead of INPUTS: the files of one split of a fetched dataset (or the demo) under --root.")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="With --dataset: where it lives (the --dest of jjepa-preprocess fetch; data/raw/pretrain or data/raw/finetune for demo).")
@click.option("--split", type=click.Choice(SPLITS), default=None, help="With --dataset: which split.")
@click.option("--processes", default=None,
              help="With --dataset jetclass: comma-separated processes, e.g. TTBar,ZJetsToNuNu [default: all ten]; "
                   "other datasets ignore it.")
@click.option("--max-files", type=click.IntRange(min=0), default=0,
              help="With --dataset: at most this many files per process (jetclass) or in all (qg); 0 = all.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=_RUN.fmt,
              help="Input layout; auto tells it from the file's content.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS), default=_CLUSTER.algorithm, help="Subjet algorithm (inclusive, E-scheme).")
@click.option("--radius", type=click.FloatRange(min=0, min_open=True), default=_CLUSTER.radius, help="Subjet radius R.")
@click.option("--n-subjets", type=click.IntRange(min=1), default=_CLUSTER.n_subjets, help="S: subjets kept per jet (hardest in pT).")
@click.option("--n-particles", type=click.IntRange(min=1, max=32767), default=_CLUSTER.n_particles,
              help="N: constituents kept per subjet (hardest in pT).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=_RUN.chunk_size, help="Jets per task and per shard.")
@click.option("--backend", type=click.Choice(BACKENDS), default=_RUN.backend,
              help="Clustering engine: the Numba kernel, or FastJet's vectorised interface.")
@click.option("--on-bad-jet", type=click.Choice(ON_BAD_JET), default=_RUN.on_bad_jet,
              help="Jets with no constituents or a non-finite/negative value (in any format: only all-zero slots "
                   "are padding): stop with an error naming file and entry, or skip and count.")
@click.option("--particle-dtype", type=click.Choice(PARTICLE_DTYPES), default=_RUN.particle_dtype,
              help="Storage of the constituent features: float16 halves the particles (~55% of the disk in all); "
                   "the trainer reads both.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Local Dask worker processes [default: the cores this job may use]; 0 runs in this process without Dask.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler, e.g. tcp://host:8786.")
@click.option("--resume", is_flag=True, help="Finish an interrupted run: redo only missing or damaged shards.")
@click.option("--force", is_flag=True, help="Delete shards already in --out and start over.")
@click.option("--max-jets", type=click.IntRange(min=1), default=None,
              help="Use at most this many jets from each input file [default: all].")
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
@click.option("--counts", default=None,
              help="generic HDF5: 1-D dataset of constituents per jet, when the constituent datasets are flat.")
@click.option("--branches", type=click.Path(dir_okay=False, exists=True), default=None,
              help="generic: YAML file with the keys tree, px, py, pz, pt, eta, phi, energy, label, classes, counts.")
@progress_option()
@reports_errors(interrupted="interrupted; complete shards are kept, rerun with --resume to finish")
def cluster(inputs, out, dataset, root, split, processes, max_files, fmt, algorithm, radius, n_subjets, n_particles,
            chunk_size, backend, on_bad_jet, particle_dtype, workers, scheduler, resume, force, max_jets, tree, px,
            py, pz, pt, eta, phi, energy, label, classes, counts, branches, progress):
    """Recluster the jets of INPUTS (ROOT, HDF5 or quark-gluon npz) into subjets and write fixed-size HDF5 shards.

    Each jet is reclustered into inclusive subjets (Cambridge–Aachen, R=0.2 by default); the S
    hardest subjets and, in each, the N hardest constituents are kept as (pT, Δη, sin(Δφ/2), E)
    relative to the jet axis. One chunk of one file becomes one shard; manifest.json lists the
    complete shards with their sha256.

    \b
    Examples:
      jjepa-preprocess cluster data/raw/pretrain/train/*.root --out data/shards/pretrain/train --workers 2
      jjepa-preprocess cluster train.h5 --out shards/top-train          # Top Tagging HDF5
      jjepa-preprocess cluster --dataset jetclass --root /data/JetClass --split val \\
          --processes TTBar,ZJetsToNuNu --out shards/val                 # a fetched dataset's split
      jjepa-preprocess cluster run.root --format generic --tree Events \\
          --px pf_px --py pf_py --pz pf_pz --energy pf_e --label is_sig --out shards/
    """
    from jjepa.preprocess.driver import run_cluster

    inputs = _cluster_inputs(inputs, dataset, root, split, processes, max_files)
    try:
        cluster_config = ClusterConfig(algorithm=algorithm, radius=radius, n_subjets=n_subjets, n_particles=n_particles)
    except ValueError as err:
        raise JJepaError(str(err)) from None
    options = _generic_options(branches, classes, tree=tree, px=px, py=py, pz=pz, pt=pt, eta=eta, phi=phi,
                               energy=energy, label=label, counts=counts)
    run = ClusterRun(inputs=tuple(inputs), out=out, fmt=fmt, cluster=cluster_config, options=options,
                     chunk_size=chunk_size, backend=backend, on_bad_jet=on_bad_jet, particle_dtype=particle_dtype,
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


def _simulator():
    """``(SimConfig, simulate_to_file)``, or a clear error when the ``sim`` extra is missing."""
    try:
        from jjepa.preprocess.simulate import SimConfig, simulate_to_file
    except ImportError as err:
        raise JJepaError(f"simulation needs the sim extra: pip install -e '.[sim]' ({err})") from None
    return SimConfig, simulate_to_file


def _simulation_options(command):
    """The options ``demo`` and ``simulate`` share: processes, the jet selection, the progress bar."""
    for option in reversed((
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes [default: the cores this job may use]."),
        click.option("--pt-min", type=float, default=_SIM.pt_min, help="Jet pT window lower edge [GeV]."),
        click.option("--pt-max", type=float, default=_SIM.pt_max, help="Jet pT window upper edge [GeV]."),
        click.option("--abs-eta-max", type=float, default=_SIM.abs_eta_max, help="Jet |η| cut."),
        progress_option(),
    )):
        command = option(command)
    return command


#: The demo's files per split, named as in JetClass so the jetclass reader's class names apply.
DEMO_FILES = {"top": "TTBar_000.root", "qcd": "ZJetsToNuNu_000.root"}


@main.command()
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Output folder of this split.")
@click.option("--dataset", type=click.Choice(DATASET_LAYOUTS), default="demo",
              help="demo: simulate in the JetClass ROOT layout; demo-toptagging: in the Top Tagging HDF5 layout; "
                   "a real dataset: simulate nothing (a note is written).")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="The split (names the Top Tagging file). [default: the name of --out]")
@click.option("--n-jets", type=click.IntRange(min=1), required=True, help="Jets per process (top and QCD).")
@click.option("--top-seed", type=int, required=True, help="Base seed of the top jets.")
@click.option("--qcd-seed", type=int, required=True, help="Base seed of the QCD jets.")
@_simulation_options
@reports_errors
def demo(out, dataset, split, n_jets, top_seed, qcd_seed, workers, pt_min, pt_max, abs_eta_max, progress):
    """Simulate one split of the demo: top and QCD jets, in a real dataset's layout under --out.

    demo: TTBar_000.root (top) and ZJetsToNuNu_000.root (QCD) in the JetClass layout, so the
    jetclass reader names the classes Tbqq and QCD. demo-toptagging: SPLIT.h5 in the Top Tagging
    layout (both classes mixed, is_signal_new 1 = top). These are the simulate stages of dvc.yaml; when
    params.yaml names a real dataset, nothing is simulated and only a note is left.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if dataset not in DEMO_DATASETS:
        (out / "NOT_SIMULATED.txt").write_text(
            f"The pipeline runs on the {dataset} dataset (params.yaml), so no demo jets were simulated.\n")
        click.echo(f"{out}: nothing simulated (dataset {dataset})")
        return
    SimConfig, simulate_to_file = _simulator()
    configs = {process: SimConfig(process=process, n_jets=n_jets, seed=seed, pt_min=pt_min, pt_max=pt_max,
                                  abs_eta_max=abs_eta_max) for process, seed in (("top", top_seed), ("qcd", qcd_seed))}
    if dataset == "demo-toptagging":
        from jjepa.preprocess.simulate import simulate_toptagging_mix

        split = split or out.name
        if split not in SPLITS:
            raise JJepaError(f"--out {out} is not named after a split: pass --split ({', '.join(SPLITS)})")
        simulate_toptagging_mix(configs["top"], configs["qcd"], out / f"{split}.h5", shuffle_seed=top_seed,
                                workers=_default_workers(workers), progress=progress)
    else:
        for process, config in configs.items():
            simulate_to_file(config, out / DEMO_FILES[process], "jetclass", workers=_default_workers(workers),
                             progress=progress)
    click.echo(f"{out}: {n_jets} top and {n_jets} QCD jets ({dataset})")


@main.command()
@click.option("--process", type=click.Choice(["top", "qcd"]), required=True,
              help="top: tt̄ with hadronic W decays, truth-matched; qcd: hard QCD.")
@click.option("--n-jets", type=click.IntRange(min=1), required=True, help="Jets to generate.")
@click.option("--format", "fmt", type=click.Choice(["jetclass", "toptagging"]), default="jetclass",
              help="Output layout: JetClass ROOT or Top Tagging HDF5.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Output file (.root or .h5).")
@click.option("--seed", type=int, default=_SIM.seed, help="Base seed; chunk k uses seed + k.")
@_simulation_options
@reports_errors
def simulate(process, n_jets, fmt, out, seed, workers, pt_min, pt_max, abs_eta_max, progress):
    """Generate anti-kT R=0.8 jets with Pythia 8 (pp, 14 TeV) and write them in a real dataset layout.

    Needs the `sim` extra (pip install -e ".[sim]"). Output is reproducible: the same seed gives
    the same file whatever the number of workers.
    """
    SimConfig, simulate_to_file = _simulator()
    config = SimConfig(process=process, n_jets=n_jets, seed=seed, pt_min=pt_min, pt_max=pt_max,
                       abs_eta_max=abs_eta_max)
    simulate_to_file(config, out, fmt, workers=_default_workers(workers),
                     progress=progress)
    click.echo(f"{out}: {n_jets} {process} jets")


@main.command()
@click.argument("dataset", type=click.Choice(PUBLIC_DATASETS))
@click.option("--dest", required=True, type=click.Path(file_okay=False),
              help="Folder to download into (later the --root of cluster --dataset).")
@click.option("--base-url", default=None,
              help="Download from this mirror (folder URL holding the files) [default: Zenodo].")
@click.option("--record-api", default=None,
              help="toptagging: JSON record listing the md5s [default: Zenodo's, api/records/2603256].")
@click.option("--checksums", type=click.Path(dir_okay=False, exists=True), default=None,
              help="md5s to verify against, lines '<md5>  <file name>' as md5sum writes them (overrides the "
                   "published ones).")
@click.option("--splits", default=None,
              help="Comma-separated splits to fetch, e.g. val,test [default: train,val,test].")
@click.option("--parts", default=None,
              help="jetclass: train parts to fetch, e.g. 0 or 0,3-4; adds train to --splits [default: 0-9].")
@click.option("--files", "n_files", type=click.IntRange(min=1), default=None,
              help="Only the first N of the selected files, e.g. qg's QG_jets.npz, QG_jets_1.npz, ... "
                   "[default: all].")
@click.option("--verify/--no-verify", default=True,
              help="Check md5s of downloads and of files already there; --no-verify skips it (and says so).")
@click.option("--force", is_flag=True, help="Replace a file in --dest that fails its md5 (default: stop).")
@click.option("--dry-run", is_flag=True, help="List the files (state in --dest, md5, URL); download nothing.")
@click.option("--keep-archives/--delete-archives", default=True,
              help="jetclass: keep the tars after unpacking them.")
@progress_option("A byte progress bar per file [default: when stderr is a terminal].")
@reports_errors(interrupted="interrupted; rerun the same command to resume (partial downloads end in .part)")
def fetch(dataset, dest, base_url, record_api, checksums, splits, parts, n_files, verify, force, dry_run,
          keep_archives, progress):
    """Download DATASET from Zenodo into --dest: resumable, md5-verified, JetClass tars unpacked.

    An interrupted download is kept as <file>.part and resumed by rerunning the same command. A
    download failing its md5 is deleted; files already there are verified and skipped. Tars are
    unpacked into <dest>/Pythia/{train_100M,val_5M,test_20M}/ once (a .<tar>.extracted marker).
    The report lists each file and the cluster commands for the result.

    \b
    What you are in for:
      jetclass    ~190 GB: 10 train parts of 15.2 GB (10M jets each), val 7.6 GB, test 30.4 GB;
                  ten processes, ROOT files of 100k jets (tars, as much again while unpacking)
      toptagging  train.h5 / val.h5 / test.h5: 1.2M / 0.4M / 0.4M jets (md5s from Zenodo's record API)
      qg          20 files of 100k quark/gluon jets; our split: train 0-15, val 16-17, test 18-19

    \b
    Examples:
      jjepa-preprocess fetch toptagging --dest /data/TopTagging
      jjepa-preprocess fetch jetclass --dest /data/JetClass --splits val,test --parts 0   # 53 GB
      jjepa-preprocess fetch qg --dest /data/QG --files 4 --dry-run
      jjepa-preprocess fetch toptagging --dest /data/TopTagging --checksums md5s.txt   # offline md5s
    """
    import dataclasses

    from jjepa.preprocess import datasets
    from jjepa.preprocess import fetch as fetching

    spec = datasets.get_spec(dataset)
    spec = dataclasses.replace(spec, base_url=base_url or spec.base_url,
                               record_api=record_api or spec.record_api)
    chosen = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    files = datasets.select_files(spec, splits=chosen, parts=datasets.parse_parts(parts) if parts else None,
                                  n_files=n_files)
    dest = Path(dest)
    if dry_run:  # no network: md5s that only the record API knows are shown as coming from there
        md5s = fetching.resolve_checksums(spec, files, checksums, verify=False)
        click.echo("\n".join(fetching.plan_lines(spec, files, md5s, dest)))
        return
    md5s = fetching.resolve_checksums(spec, files, checksums, verify=verify)
    options = fetching.FetchOptions(dest=dest, verify=verify, force=force, keep_archives=keep_archives,
                                    progress=progress)
    report = fetching.fetch_dataset(spec, files, md5s, options)
    click.echo("\n".join(report.lines()))
