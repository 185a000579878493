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
from jjepa.train.config import resolve_finetune_config, resolve_pretrain_config
from jjepa.train.runners.pretrain import pretrain
from jjepa.train.runners.scan import scan

from preprocess import inputs

#: The model of this benchmark: the tiny preset widened, sized for minutes on a 2-core CPU.
MODEL = {"model.embed_dim": 64, "model.depth": 3, "model.n_heads": 4, "model.embedding_dim": 128,
         "model.predictor_dim": 32, "model.predictor_depth": 2, "model.predictor_heads": 4}


def shards(cache: Path, files: list[Path], chunk_size: int) -> Path:
    """All jets clustered into shards of ``chunk_size`` jets (once)."""
    out = cache / f"shards-{chunk_size}"
    if not (out / "manifest.json").exists():
        run_cluster(ClusterRun(inputs=tuple(map(str, files)), out=str(out), chunk_size=chunk_size,
                               workers=os.cpu_count() or 1, force=True, progress=True))
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
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    changed = sorted(k for k, v in wanted.items() if k in stored and stored[k] != v)
    if changed:
        raise SystemExit(f"{run} was pretrained with other values of {changed} than asked for now; "
                         f"delete it, or pass --set for those keys to get a folder of its own")


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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="pretraining config override, e.g. mask_fraction=0.5 (repeatable; part of the cache key)")
    parser.add_argument("--finetune-set", dest="finetune_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="finetuning config override, e.g. encoder_lr_scale=0.01 (repeatable; part of the scan's key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    torch.set_num_threads(os.cpu_count() or 1)

    folders = split(shards(args.cache, inputs(args.cache, args.n_jets), args.chunk_size), args.cache)
    n_train = read_manifest(folders["train"]).n_jets
    overrides, finetune_overrides = parse_pairs(args.overrides), parse_pairs(args.finetune_overrides)
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
    pretrain_seconds = time.perf_counter() - start
    log_rows = np.atleast_1d(np.genfromtxt(run / "train_log.csv", delimiter=",", names=True))

    fractions = [min(1.0, int(n) / n_train) for n in args.labels.split(",")]
    base = resolve_finetune_config({
        "train": str(folders["train"]), "val": str(folders["val"]), "test": str(folders["test"]),
        "checkpoint": str(run / "checkpoints" / "last.pt"), "epochs": args.finetune_epochs,
        "batch_size": args.batch_size, "val_batches": 8, "device": args.device, "out": "unused",
        **finetune_overrides})
    scan_dir = args.cache / "label-efficiency" / "-".join(
        [f"scan-{tag}"] + [f"ft.{k}={v}" for k, v in sorted(finetune_overrides.items())])
    rows = scan(base, fractions, args.modes.split(","), [int(s) for s in args.seeds.split(",")], scan_dir,
                progress=False)

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


if __name__ == "__main__":
    main()
