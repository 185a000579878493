"""Label efficiency: does J-JEPA pretraining help a top tagger when labels are few?

On simulated Pythia top and QCD jets (the cached inputs of ``bench/preprocessing.py``, JetClass ROOT
layout), reclustered into CA R=0.2 subjet shards and split 80% / 10% / 10% into train / val /
test by whole shards:

1. pretrain J-JEPA on the training jets (labels unused);
2. finetune from the pretrained target encoder (``finetune``), as a linear probe (``freeze``) and
   from random initialisation (``scratch``), on class-stratified labelled subsets of the training
   jets down to ~100 jets, over several seeds (``jjepa-train scan``);
3. report test-set rejection 1/εB at εS = 0.5 and AUC, mean ± std over seeds.

Everything is cached under ``--cache`` and resumable (finished scan cells are skipped). Prints one
JSON line; ``summary.md`` and ``rejection_vs_labels.png`` are in the scan folder, whose path the
JSON line gives. Example::

    python bench/label_efficiency.py --n-jets 100000 --pretrain-steps 3000
    python bench/label_efficiency.py --pretrain-steps 1500 --set mask_fraction=0.5 --labels 100,1000
    python bench/label_efficiency.py --pretrain-steps 1500 --modes finetune --finetune-set encoder_lr_scale=1.0

``--ablation`` measures every departure from the paper's code (docs/paper.md) instead: each switch
of ``SWITCHES`` flipped alone from our default (``ours+<switch>``) and from the paper profile
(``paper-<switch>``), and each option of ``OPTIONS`` set alone from ours, every variant pretrained once
and finetuned at each ``--labels`` × ``--seeds``.
Variants are compared with their reference (``ours`` or ``paper``) on the *validation* jets (the test
set is never read), paired (same jets, same seeds) with the two-level bootstrap of
``jjepa.train.report.intervals.paired_deltas``: ΔAUC and the ratio of rejections at εS = 0.5 with
68% intervals, on all validation jets and on those with at least 10 subjets (the paper's sets)::

    python bench/label_efficiency.py --ablation --pretrain-steps 1500 --labels 100,1000 --modes finetune

Only the switches are flipped; the model size, learning rate, steps and batch size stay the
benchmark's (the paper's ViT-L for 300 epochs is far beyond a CPU).

``--protocol`` runs the study under the evaluation protocol (docs/evaluation.md): one pretraining per
``--pretrain-seeds``, finetune/freeze from each and scratch once per finetuning seed (the same label
subsets), then per mode and label count the central value, seed spread and test interval over all
runs, paired comparisons with scratch on validation and on test jets, and each ``--alternative``
pretraining, and each ``--finetune-alternative`` finetuning setting, compared with ours on validation jets
only (where defaults are chosen)::

    python bench/label_efficiency.py --protocol --n-jets 400000 --pretrain-seeds 0,1 --seeds 0,1 \
        --modes finetune,freeze --alternative context_sees_targets=true --finetune-alternative encoder_lr_scale=1.0

``--modes ...,part`` adds the ParT baseline: like ``scratch`` it uses no pretraining, is trained once per
finetuning seed, and every other mode is also compared with it; ``--part-set`` sizes it (its own scan
folder), e.g. the CPU size ``--part-set part.embed_dim=32 --part-set part.num_layers=2 ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from jjepa.common.cli_utils import parse_pairs
from jjepa.common.shards import Manifest, read_manifest, write_manifest
from jjepa.preprocess.driver import ClusterRun, run_cluster
from jjepa.train.config import (
    config_differences,
    describe_differences,
    resolve_finetune_config,
    resolve_pretrain_config,
)
from jjepa.train.data.loader import ShardSet
from jjepa.train.report.metrics import background_index, tagging_metrics
from jjepa.train.report.summary import cell_name
from jjepa.train.runners.pretrain import pretrain
from jjepa.train.runners.scan import scan
from preprocessing import inputs

log = logging.getLogger("label_efficiency")

#: The model of this benchmark: the demo's (params.yaml's ``pretrain.model``, the tiny preset widened),
#: sized for minutes on a 2-core CPU; read from there so the two never drift apart.
MODEL = {f"model.{key}": value for key, value in
         yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["pretrain"]["model"].items()}

#: The departures from the paper's code that a switch undoes (docs/paper.md): name → (pretraining key,
#: the paper's value, also a finetuning key). Our value is whatever the benchmark's config resolves to.
SWITCHES: dict[str, tuple[str, str, bool]] = {
    "encoder_positions": ("model.encoder_positions", "true", False),
    "context_sees_targets": ("context_sees_targets", "true", False),
    "mlp_ratio": ("model.mlp_ratio", "1.0", False),
    "min_subjets": ("min_subjets", "10", True),
}
#: Options that are neither ours nor the paper's, measured against ours alone (same layout as ``SWITCHES``):
#: targets among the 10 hardest subjets, as the reference's particle-level masks choose particles.
OPTIONS: dict[str, tuple[str, str, bool]] = {
    "target_selection": ("target_selection", "hardest", False),
}
#: Modes that use no pretraining: trained once per finetuning seed, and what the others are compared with.
BASELINES = ("scratch", "part")
#: The paper's jet filter: figures are also given on the validation jets with at least this many subjets.
PAPER_MIN_SUBJETS = 10


def shards(cache: Path, files: list[Path], chunk_size: int, n_jets: int) -> Path:
    """All jets clustered into shards of ``chunk_size`` jets (once); refuses a cache made for another ``n_jets``."""
    out = cache / f"shards-{chunk_size}"
    if not (out / "manifest.json").exists():
        run_cluster(ClusterRun(inputs=tuple(map(str, files)), out=str(out), chunk_size=chunk_size,
                               workers=os.cpu_count() or 1, force=True, progress=True))
    cached = read_manifest(out).n_jets
    if cached != n_jets:
        raise SystemExit(f"{cache} holds {cached} simulated jets, not the --n-jets {n_jets} asked for: pass "
                         f"--n-jets {cached}, or --cache with another folder for a study of another size")
    return out


def split(folder: Path, cache: Path) -> dict[str, Path]:
    """Train / val / test folders of hard links to whole shards: per input file, 80% / 10% / 10%."""
    manifest = read_manifest(folder)
    by_file: dict[str, list] = {}
    for record in manifest.shards:
        by_file.setdefault(record.source["file"], []).append(record)
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for records in by_file.values():
        n = len(records)
        n_val = n_test = max(1, n // 10)
        parts["train"] += records[:n - n_val - n_test]
        parts["val"] += records[n - n_val - n_test:n - n_test]
        parts["test"] += records[n - n_test:]
    folders = {}
    for name, records in parts.items():
        target = folders[name] = cache / f"split-{folder.name}" / name
        target.mkdir(parents=True, exist_ok=True)
        for record in records:
            link = target / record.file
            if not link.exists():
                os.link(folder / record.file, link)
        write_manifest(target, Manifest(cluster=manifest.cluster, classes=manifest.classes, shards=records))
    return folders


def refuse_stale(run: Path, config) -> None:
    """Stop if the cached run folder was made with another configuration than the one asked for.

    The folder's name holds only the steps, batch size and ``--set`` overrides, so a changed default
    (e.g. ``context_sees_targets``) would otherwise silently reuse an old pretraining.
    """
    stored_path = run / "config.yaml"
    if not stored_path.exists():
        return
    stored = yaml.safe_load(stored_path.read_text())
    differences = config_differences(stored, yaml.safe_load(yaml.safe_dump(config.to_dict())), new_fields_ok=True)
    if differences:
        raise SystemExit(f"{run} was pretrained with other settings ({describe_differences(differences)}); "
                         "delete it, or pass --set for those keys to get a folder of its own")


def pretrain_variant(args, folders: dict[str, Path], overrides: dict[str, str]) -> tuple[Path, str, float]:
    """Pretrain (or reuse) the run of ``overrides``; returns its folder, its cache tag and the seconds spent."""
    tag = "-".join([f"s{args.pretrain_steps}", f"b{args.batch_size}"] + [f"{k}={v}" for k, v in sorted(overrides.items())])
    run = args.cache / "label-efficiency" / f"pretrain-{tag}"
    start = time.perf_counter()
    config = resolve_pretrain_config({
        "data": str(folders["train"]), "val": str(folders["val"]), "out": str(run), "preset": "tiny",
        "steps": args.pretrain_steps, "batch_size": args.batch_size, "log_every": 50, "val_every": 500,
        "val_batches": 8, "checkpoint_every": 500, "device": args.device, **MODEL, **overrides})
    refuse_stale(run, config)
    if not (run / "metrics.json").exists():
        pretrain(config, resume=(run / "checkpoints" / "last.pt").exists())
    return run, tag, time.perf_counter() - start


def scan_variant(args, folders: dict[str, Path], run: Path, tag: str, finetune_overrides: dict[str, str],
                 modes: list[str], fractions: list[float]) -> tuple[list[dict], Path]:
    """Finetune from ``run`` over ``fractions`` × ``modes`` × ``--seeds``; returns the scan rows and folder."""
    base = resolve_finetune_config({
        "train": str(folders["train"]), "val": str(folders["val"]), "test": str(folders["test"]),
        "checkpoint": str(run / "checkpoints" / "last.pt"), "epochs": args.finetune_epochs,
        "batch_size": args.batch_size, "val_batches": 8, "device": args.device, "out": "unused",
        **finetune_overrides})
    scan_dir = args.cache / "label-efficiency" / "-".join(
        [f"scan-{tag}"] + [f"ft.{k}={v}" for k, v in sorted(finetune_overrides.items())])
    rows = scan(base, fractions, modes, [int(s) for s in args.seeds.split(",")], scan_dir, progress=False)
    return rows, scan_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-jets", type=int, default=100_000, help="jets in all (half top, half QCD)")
    parser.add_argument("--chunk-size", type=int, default=5_000, help="jets per shard")
    parser.add_argument("--pretrain-steps", type=int, default=3_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--labels", default="100,1000,10000", help="labelled training jets per scan point")
    parser.add_argument("--modes", default="finetune,freeze,scratch")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--finetune-epochs", type=float, default=10.0)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "jjepa-bench")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch CPU threads (default: every core; fewer to share the machine with another study)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="pretraining config override, e.g. mask_fraction=0.5 (repeatable; part of the cache key)")
    parser.add_argument("--finetune-set", dest="finetune_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="finetuning config override, e.g. encoder_lr_scale=0.01 (repeatable; part of the scan's key)")
    parser.add_argument("--ablation", action="store_true",
                        help="flip each departure from the paper alone, from our default and from the paper "
                             "profile, and compare on validation jets (paired, with intervals); see the docstring")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="bootstrap resamples of --ablation's and --protocol's intervals")
    parser.add_argument("--protocol", action="store_true",
                        help="the study under the evaluation protocol (docs/evaluation.md): pretrain once per "
                             "--pretrain-seeds, finetune/freeze from each and scratch once, then figures with seed "
                             "spread and test intervals, and paired comparisons with scratch on validation and test")
    parser.add_argument("--pretrain-seeds", default="0,1", help="--protocol: pretraining seeds")
    parser.add_argument("--part-set", dest="part_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="--protocol: finetuning overrides of the part mode only, e.g. part.num_layers=2 "
                             "(repeatable; part of its scan's key)")
    parser.add_argument("--alternative", action="append", default=[], metavar="KEY=VALUE",
                        help="--protocol: a pretraining variant (e.g. context_sees_targets=true) compared with ours "
                             "on validation jets only (first pretraining seed, finetune mode), to choose defaults")
    parser.add_argument("--finetune-alternative", action="append", default=[], metavar="KEY=VALUE",
                        help="--protocol: a finetuning variant (e.g. encoder_lr_scale=1.0) of the finetune mode, "
                             "from every pretraining seed, compared with ours on validation jets only")
    args = parser.parse_args()
    if (args.alternative or args.finetune_alternative) and not args.protocol:
        parser.error("--alternative and --finetune-alternative are choices of --protocol: add --protocol")
    if args.part_overrides and not (args.protocol and "part" in args.modes.split(",")):
        parser.error("--part-set sizes the part mode of --protocol: add --protocol and part to --modes")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)

    folders = split(shards(args.cache, inputs(args.cache, args.n_jets), args.chunk_size, args.n_jets), args.cache)
    if args.ablation:
        print(json.dumps(ablation(args, folders)))
        return
    if args.protocol:
        print(json.dumps(protocol(args, folders)))
        return
    n_train = read_manifest(folders["train"]).n_jets
    overrides, finetune_overrides = parse_pairs(args.overrides), parse_pairs(args.finetune_overrides)
    run, tag, pretrain_seconds = pretrain_variant(args, folders, overrides)
    log_rows = np.atleast_1d(np.genfromtxt(run / "train_log.csv", delimiter=",", names=True))

    fractions = [min(1.0, int(n) / n_train) for n in args.labels.split(",")]
    rows, scan_dir = scan_variant(args, folders, run, tag, finetune_overrides, args.modes.split(","), fractions)

    def figure(mode: str, fraction: float, key: str) -> tuple[float, float]:
        values = np.array([float(r[key]) for r in rows if r["mode"] == mode and r["label_fraction"] == fraction])
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    table = {f"{m}@{r['n_train_labels']}": {"rej_at_50": figure(m, f, "rej_at_50"), "auc": figure(m, f, "auc")}
             for m in args.modes.split(",") for f in fractions
             for r in [next(r for r in rows if r["mode"] == m and r["label_fraction"] == f)]}
    smallest = min(fractions)
    pre, scratch = figure("finetune", smallest, "rej_at_50"), figure("scratch", smallest, "rej_at_50")
    print(json.dumps({
        "benchmark": "label_efficiency", "n_jets": args.n_jets, "n_train": n_train,
        "pretrain_steps": args.pretrain_steps, "overrides": overrides,
        "finetune_overrides": finetune_overrides, "pretrain_seconds": round(pretrain_seconds, 1),
        "pretrain_loss_first_last": [float(log_rows["loss"][0]), float(log_rows["loss"][-1])],
        "target_std_last": float(log_rows["target_std"][-1]), "target_rank_last": float(log_rows["target_rank"][-1]),
        "results": table,
        "finetune_beats_scratch_at_smallest": pre[0] > scratch[0],
        "ratio_rej50_finetune_vs_scratch_at_smallest": round(pre[0] / scratch[0], 3),
        "scan_dir": str(scan_dir), "device": str(args.device), "cores": os.cpu_count(),
        "torch": torch.__version__, "python": platform.python_version(),
    }))


# --- the ablation (--ablation) ------------------------------------------------------------------------

def ablation_variants(ours: dict[str, str]) -> dict[str, tuple[dict[str, str], dict[str, str], str | None]]:
    """Every variant of the ablation: name → (pretraining overrides, finetuning overrides, reference variant).

    Args:
        ours: per switch, our value as the benchmark's config resolves it (a string, as ``--set`` gives).

    ``ours`` and ``paper`` are the references; ``ours+S`` flips switch S to the paper's value, ``paper-S``
    flips it back to ours; ``ours+O`` sets option O of ``OPTIONS``. Overrides hold only the values that
    differ from our default, so ``ours`` is the plain benchmark's run and shares its cache.
    """
    knobs = {**SWITCHES, **OPTIONS}

    def overrides(values: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        pre = {knobs[n][0]: v for n, v in values.items() if v != ours[n]}
        ft = {knobs[n][0]: v for n, v in values.items() if knobs[n][2] and v != ours[n]}
        return pre, ft

    paper = {**ours, **{name: value for name, (_, value, _) in SWITCHES.items()}}
    variants = {"ours": (*overrides(ours), None), "paper": (*overrides(paper), None)}
    for name in SWITCHES:
        if paper[name] == ours[name]:
            continue
        variants[f"ours+{name}"] = (*overrides({**ours, name: paper[name]}), "ours")
        variants[f"paper-{name}"] = (*overrides({**paper, name: ours[name]}), "paper")
    for name, (_, value, _) in OPTIONS.items():
        if value != ours[name]:
            variants[f"ours+{name}"] = (*overrides({**ours, name: value}), "ours")
    return variants


def _cell_predictions(scan_dir: Path, mode: str, fraction: float, seeds: list[int]):
    """Per seed, the validation (labels, probs, classes) of a scan's cells (``val_predictions.npz``)."""
    out = []
    for seed in seeds:
        path = scan_dir / cell_name(mode, fraction, seed) / "val_predictions.npz"
        if not path.exists():
            raise SystemExit(f"{path} is missing: the ablation compares validation predictions, which "
                             "`jjepa-train finetune` writes; delete the scan folder and rerun")
        with np.load(path) as f:
            out.append((f["labels"], f["probs"].astype(np.float64), tuple(str(c) for c in f["classes"])))
    return out


def _restrict(predictions, n_real: np.ndarray, subset: str):
    """The predictions on ``subset`` (``all`` or ``ge10``) of the validation jets, or None when a run does not
    score them (a ``min_subjets`` run scores only the jets it keeps). Rows are in file order either way."""
    keep = n_real >= PAPER_MIN_SUBJETS
    out = []
    for labels, probs, classes in predictions:
        if len(labels) == len(n_real):
            rows = slice(None) if subset == "all" else keep
        elif len(labels) == int(keep.sum()) and subset == "ge10":
            rows = slice(None)
        else:
            return None
        out.append((labels[rows], probs[rows], classes))
    return out


def _seed_figures(predictions) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per seed, the AUC and log rejection at εS = 0.5, and whether a rejection is only a lower bound.

    A seed with no background jet passing gets εB floored at half a background jet (as
    ``paired_deltas`` does), so the mean over seeds stays finite and is flagged as a lower bound.
    """
    auc, log_rej, bound = [], [], False
    for labels, probs, classes in predictions:
        figures = tagging_metrics(labels, probs, classes)
        n_background = max(1, int((labels == background_index(classes)).sum()))
        efficiency = 1.0 / figures["rej_at_50"]
        bound |= efficiency < 0.5 / n_background
        auc.append(figures["auc"])
        log_rej.append(-np.log(max(efficiency, 0.5 / n_background)))
    return np.array(auc), np.array(log_rej), bool(bound)


def ablation(args, folders: dict[str, Path]) -> dict:
    """Run every variant of ``ablation_variants`` and compare each with its reference; writes
    ``ablation.json`` and ``ablation.md`` under the cache and returns the JSON's summary."""
    from jjepa.train.report.intervals import paired_deltas

    common = parse_pairs(args.overrides)
    base = resolve_pretrain_config({"steps": args.pretrain_steps, "preset": "tiny", **MODEL, **common})
    ours = {}
    for name, (key, _, _) in {**SWITCHES, **OPTIONS}.items():
        value = base
        for part in key.split("."):
            value = getattr(value, part)
        ours[name] = str(value).lower() if isinstance(value, bool) else str(value)
    modes = [m for m in args.modes.split(",") if m != "scratch"]
    if not modes:
        raise SystemExit("--ablation compares pretrainings: give --modes finetune and/or freeze")
    seeds = [int(s) for s in args.seeds.split(",")]
    labels = [int(n) for n in args.labels.split(",")]
    val = ShardSet(folders["val"])
    n_real = np.concatenate([np.asarray(m["subjet_mask"]).sum(axis=1) for m in val.maps])
    train = ShardSet(folders["train"])

    runs: dict[str, dict] = {}
    for name, (pre, ft, _) in ablation_variants(ours).items():
        log.info("ablation variant %s: pretraining %s, finetuning %s", name, pre or "defaults", ft or "defaults")
        run, tag, seconds = pretrain_variant(args, folders, {**common, **pre})
        finetune_overrides = {**parse_pairs(args.finetune_overrides), **ft}
        n_available = train.with_min_subjets(int(finetune_overrides.get("min_subjets", 0))).n_jets
        fractions = {n: min(1.0, n / n_available) for n in labels}
        _, scan_dir = scan_variant(args, folders, run, tag, finetune_overrides, modes, list(fractions.values()))
        runs[name] = {"pretrain": {**common, **pre}, "finetune": finetune_overrides, "scan_dir": scan_dir,
                      "fractions": fractions, "pretrain_seconds": round(seconds, 1)}

    rows = []
    for name, (_, _, reference) in ablation_variants(ours).items():
        for mode in modes:
            for n in labels:
                mine = _cell_predictions(runs[name]["scan_dir"], mode, runs[name]["fractions"][n], seeds)
                theirs = None
                if reference is not None:
                    theirs = _cell_predictions(runs[reference]["scan_dir"], mode, runs[reference]["fractions"][n],
                                               seeds)
                for subset in ("all", "ge10"):
                    a = _restrict(mine, n_real, subset)
                    if a is None:
                        continue
                    auc, log_rej, bound = _seed_figures(a)
                    row = {"variant": name, "reference": reference, "mode": mode, "labels": n, "subset": subset,
                           "n_val": int(len(a[0][0])), "auc": [float(np.mean(auc)), float(np.std(auc))],
                           "rej_at_50": [float(np.exp(np.mean(log_rej))), float(np.std(log_rej))],
                           "rej_at_50_lower_bound": bound}
                    b = None if theirs is None else _restrict(theirs, n_real, subset)
                    if b is not None:
                        if any(not np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True)):
                            raise SystemExit(f"{name} and {reference} were scored on different jets ({subset})")
                        row["paired"] = paired_deltas(a[0][0], a[0][2], [p for _, p, _ in a], [p for _, p, _ in b],
                                                      n_resamples=args.resamples, seed=0)
                    rows.append(row)
    out = args.cache / "label-efficiency" / f"ablation-s{args.pretrain_steps}-b{args.batch_size}"
    out.mkdir(parents=True, exist_ok=True)
    scale = {"n_jets": args.n_jets, "n_train": train.n_jets, "n_val": val.n_jets,
             "n_val_ge10": int((n_real >= PAPER_MIN_SUBJETS).sum()), "pretrain_steps": args.pretrain_steps,
             "batch_size": args.batch_size, "labels": labels, "seeds": seeds, "modes": modes,
             "finetune_epochs": args.finetune_epochs, "device": str(args.device), "cores": os.cpu_count(),
             "torch": torch.__version__}
    report = {"benchmark": "label_efficiency_ablation", "scale": scale, "ours": ours,
              "variants": {k: {**v, "scan_dir": str(v["scan_dir"])} for k, v in runs.items()}, "rows": rows}
    (out / "ablation.json").write_text(json.dumps(report, indent=1))
    (out / "ablation.md").write_text(ablation_markdown(rows, scale))
    return {"benchmark": "label_efficiency_ablation", "scale": scale, "report": str(out / "ablation.md"),
            "rows": len(rows)}


def ablation_markdown(rows: list[dict], scale: dict) -> str:
    """The ablation as a Markdown table: figures per variant and paired deltas against its reference."""
    lines = [f"Validation jets: {scale['n_val']} (of which {scale['n_val_ge10']} with >= {PAPER_MIN_SUBJETS} "
             f"subjets); {scale['n_train']} training jets, {scale['pretrain_steps']} pretraining steps of "
             f"{scale['batch_size']}; seeds {scale['seeds']}. AUC: mean (seed std); R50: rejection at eps_S = 0.5, "
             "geometric mean; deltas against the reference with 68% paired-bootstrap intervals.", "",
             "| variant | vs | jets | mode @ labels | AUC | R50 | ΔAUC [68%] | R50 ratio [68%] |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paired = r.get("paired")
        d_auc = d_rej = "–"
        if paired:
            a, q = paired["auc"], paired["rej_at_50_ratio"]
            d_auc = f"{a['delta']:+.4f} [{a['ci68'][0]:+.4f}, {a['ci68'][1]:+.4f}]"
            d_rej = f"{q['delta']:.3f} [{q['ci68'][0]:.3f}, {q['ci68'][1]:.3f}]"
        lines.append(f"| {r['variant']} | {r['reference'] or '–'} | {r['subset']} ({r['n_val']}) | "
                     f"{r['mode']} @ {r['labels']} | {r['auc'][0]:.4f} ({r['auc'][1]:.4f}) | "
                     f"{'>' if r['rej_at_50_lower_bound'] else ''}{r['rej_at_50'][0]:.1f} | "
                     f"{d_auc} | {d_rej} |")
    return "\n".join(lines) + "\n"


# --- the study under the evaluation protocol (--protocol) -------------------------------------------------

def _predictions(scan_dir: Path, mode: str, fraction: float, seed: int, split: str):
    """(labels, probs, classes) of one cell on ``split`` (``val`` or ``test``)."""
    with np.load(scan_dir / cell_name(mode, fraction, seed) / f"{split}_predictions.npz") as f:
        return f["labels"], f["probs"].astype(np.float64), [str(c) for c in f["classes"]]


def protocol(args, folders: dict[str, Path]) -> dict:
    """Pretraining seeds × finetuning seeds, scratch once, figures and paired comparisons; writes
    ``protocol.json`` and ``protocol.md`` under the cache and returns the JSON's summary.

    Each (pretraining seed p, finetuning seed s) run of a mode is paired with scratch's seed s (the same
    label subset); the paired bootstrap resamples jets and these pairs, so both seeds are in the interval.
    Choices (``--alternative``) are compared on validation jets only; the test set scores the default.
    """
    from jjepa.train.report.intervals import paired_deltas
    from jjepa.train.report.summary import format_figure, run_row, summarise

    overrides, finetune_overrides = parse_pairs(args.overrides), parse_pairs(args.finetune_overrides)
    pretrain_seeds = [int(p) for p in args.pretrain_seeds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    n_train = read_manifest(folders["train"]).n_jets
    fractions = {int(n): min(1.0, int(n) / n_train) for n in args.labels.split(",")}
    asked = args.modes.split(",")
    modes = [m for m in asked if m not in BASELINES]
    scans, pretrain_runs, pretrainings = {}, {}, {}
    for k, p in enumerate(pretrain_seeds):
        run, tag, seconds = pretrain_variant(args, folders, {**overrides, "seed": str(p)})
        pretrain_runs[p], pretrainings[p] = {"run": str(run), "seconds": round(seconds, 1)}, (run, tag)
        _, scans[p] = scan_variant(args, folders, run, tag, finetune_overrides, modes + (["scratch"] if k == 0 else []),
                                   list(fractions.values()))
    first_run, first_tag = pretrainings[pretrain_seeds[0]]
    # The baselines use no pretraining: each is trained once per finetuning seed (the same label subsets).
    baseline_dirs = {"scratch": scans[pretrain_seeds[0]]}
    if "part" in asked:
        _, baseline_dirs["part"] = scan_variant(args, folders, first_run, first_tag,
                                                {**finetune_overrides, **parse_pairs(args.part_overrides)}, ["part"],
                                                list(fractions.values()))
    # each choice: its finetune scans, each paired with ours from the same pretraining
    alternatives: dict[str, list[tuple[Path, Path]]] = {}
    for pair in args.alternative:  # a pretraining variant: the first pretraining seed only
        extra = parse_pairs([pair])
        run, tag, _ = pretrain_variant(args, folders, {**overrides, "seed": str(pretrain_seeds[0]), **extra})
        _, alt_dir = scan_variant(args, folders, run, tag, finetune_overrides, ["finetune"], list(fractions.values()))
        alternatives[pair] = [(alt_dir, scans[pretrain_seeds[0]])]
    for pair in args.finetune_alternative:  # a finetuning variant: cheap, so from every pretraining
        alternatives[f"finetune {pair}"] = [
            (scan_variant(args, folders, *pretrainings[p], {**finetune_overrides, **parse_pairs([pair])},
                          ["finetune"], list(fractions.values()))[1], scans[p]) for p in pretrain_seeds]

    # every run as (mode, folder, row seed, finetuning seed); pretrained modes once per pretraining seed
    runs = [(mode, scans[p], 1000 * p + s, s) for p in pretrain_seeds for mode in modes for s in seeds]
    runs += [(mode, folder, 1000 * pretrain_seeds[0] + s, s) for mode, folder in baseline_dirs.items() for s in seeds]
    rows = []
    for mode, folder, row_seed, s in runs:
        for fraction in fractions.values():
            metrics = json.loads((folder / cell_name(mode, fraction, s) / "metrics.json").read_text())
            rows.append(run_row(mode, fraction, row_seed, metrics))
    summary = summarise(rows)

    def paired(split: str, mode: str, baseline: str, fraction: float) -> dict:
        """``mode`` against ``baseline``, each run paired with the baseline's run of its finetuning seed."""
        mine = [(folder, s) for m, folder, _, s in runs if m == mode]
        a = [_predictions(folder, mode, fraction, s, split) for folder, s in mine]
        b = [_predictions(baseline_dirs[baseline], baseline, fraction, s, split) for _, s in mine]
        if any(not np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True)):
            raise SystemExit(f"{split}: {mode} and {baseline} runs scored on different jets")
        return paired_deltas(a[0][0], a[0][2], [x[1] for x in a], [y[1] for y in b], n_resamples=args.resamples)

    comparisons = []
    for baseline in baseline_dirs:
        for mode in modes + [m for m in baseline_dirs if m != baseline and m != "scratch"]:
            for n, fraction in fractions.items():
                for split in ("val", "test"):
                    comparisons.append({"mode": mode, "baseline": baseline, "labels": n, "split": split,
                                        **paired(split, mode, baseline, fraction)})
    choices = []
    for pair, dirs in alternatives.items():
        for n, fraction in fractions.items():
            a = [_predictions(alt_dir, "finetune", fraction, s, "val") for alt_dir, _ in dirs for s in seeds]
            b = [_predictions(ours_dir, "finetune", fraction, s, "val") for _, ours_dir in dirs for s in seeds]
            choices.append({"alternative": pair, "labels": n, "pairs": len(a),
                            **paired_deltas(a[0][0], a[0][2], [x[1] for x in a], [y[1] for y in b],
                                            n_resamples=args.resamples)})

    out = args.cache / "label-efficiency" / f"protocol-s{args.pretrain_steps}-b{args.batch_size}"
    out.mkdir(parents=True, exist_ok=True)
    scale = {"n_jets": args.n_jets, "n_train": n_train, "n_val": read_manifest(folders["val"]).n_jets,
             "n_test": read_manifest(folders["test"]).n_jets, "pretrain_steps": args.pretrain_steps,
             "pretrain_seeds": pretrain_seeds, "seeds": seeds, "labels": list(fractions),
             "finetune_epochs": args.finetune_epochs, "overrides": overrides, "finetune_overrides": finetune_overrides,
             "cores": os.cpu_count(), "torch": torch.__version__}
    report = {"benchmark": "label_efficiency_protocol", "scale": scale, "pretrain": pretrain_runs,
              "summary": summary, "paired": comparisons, "choices": choices}
    (out / "protocol.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"Test jets: {scale['n_test']}, validation jets: {scale['n_val']}, training jets: {n_train}; pretraining "
             f"seeds {pretrain_seeds} × finetuning seeds {seeds}; {args.pretrain_steps} pretraining steps.", "",
             "| mode | labelled jets | runs | AUC | 1/εB at εS=0.5 | 1/εB at εS=0.3 | best step at edge |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for e in summary:
        lines.append(f"| {e['mode']} | {e['n_train_labels']} | {e['n_seeds']} | {format_figure(e, 'auc')} | "
                     f"{format_figure(e, 'rej_at_50')} | {format_figure(e, 'rej_at_30')} | "
                     f"{e['n_best_at_edge']}/{e['n_seeds']} |")
    lines += ["", "| mode | vs | labelled jets | jets | pairs | ΔAUC [68 %] [95 %] | rejection ratio [68 %] [95 %] |",
              "|---|---|---:|---|---:|---:|---:|"]
    for c in comparisons:
        a, q = c["auc"], c["rej_at_50_ratio"]
        lines.append(f"| {c['mode']} | {c['baseline']} | {c['labels']} | {c['split']} | {a['n_seeds']} | "
                     f"{a['delta']:+.4f} [{a['ci68'][0]:+.4f}, {a['ci68'][1]:+.4f}] [{a['ci95'][0]:+.4f}, "
                     f"{a['ci95'][1]:+.4f}] | {q['delta']:.2f} [{q['ci68'][0]:.2f}, {q['ci68'][1]:.2f}] "
                     f"[{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}] |")
    if choices:
        lines += ["", "| alternative vs ours (finetune, validation jets) | labelled jets | pairs | ΔAUC [68 %] [95 %] | "
                  "rejection ratio [68 %] [95 %] |", "|---|---:|---:|---:|---:|"]
        for c in choices:
            a, q = c["auc"], c["rej_at_50_ratio"]
            lines.append(f"| {c['alternative']} | {c['labels']} | {c['pairs']} | {a['delta']:+.4f} [{a['ci68'][0]:+.4f}, "
                         f"{a['ci68'][1]:+.4f}] [{a['ci95'][0]:+.4f}, {a['ci95'][1]:+.4f}] | {q['delta']:.2f} "
                         f"[{q['ci68'][0]:.2f}, {q['ci68'][1]:.2f}] [{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}] |")
    (out / "protocol.md").write_text("\n".join(lines) + "\n")
    return {"benchmark": "label_efficiency_protocol", "scale": scale, "report": str(out / "protocol.md")}


if __name__ == "__main__":
    main()
