"""``jjepa-train``: pretrain J-JEPA on subjet shards, finetune taggers, scan label fractions, embed jets.

Configuration flows one way: the dataclass defaults (``jjepa.train.config``), then the ``pretrain:``
(or ``finetune:``) section of ``--config`` (e.g. ``params.yaml``), then the options given on the command line, then
``--set key=value`` pairs (any field, ``model.depth=4`` for nested ones).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import yaml
from jjepa.common.cli_utils import parse_pairs, reports_errors, setup_logging
from jjepa.common.errors import JJepaError
from jjepa.train.config import (
    AGGREGATIONS,
    DEVICES,
    ENCODERS,
    MODES,
    PRESETS,
    resolve_finetune_config,
    resolve_pretrain_config,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
def main(verbose: int) -> None:
    """J-JEPA on subjet shards (from ``jjepa-preprocess cluster``): pretrain, finetune, scan, embed."""
    setup_logging(verbose)


def _yaml_section(path: str | None, section: str) -> dict:
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise JJepaError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict):
        raise JJepaError(f"{path}: expected a YAML mapping")
    value = loaded.get(section, {}) or {}
    if not isinstance(value, dict):
        raise JJepaError(f"{path}: the {section!r} section must be a mapping")
    return value


@main.command()
@click.option("--data", type=click.Path(file_okay=False, exists=True), help="Shard folder to pretrain on.")
@click.option("--val", type=click.Path(file_okay=False, exists=True), help="Shard folder for the validation loss.")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run folder (checkpoints, log, config).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="YAML file whose 'pretrain:' section sets defaults (e.g. params.yaml).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="Model size; tiny trains in seconds on a CPU. [default: small]")
@click.option("--steps", type=int, default=None, help="Optimizer steps (or --epochs).")
@click.option("--epochs", type=float, default=None, help="Passes over --data, converted to steps.")
@click.option("--batch-size", type=int, default=None, help="Jets per step and per process. [default: 256]")
@click.option("--lr", type=float, default=None, help="Peak learning rate. [default: 5e-4]")
@click.option("--mask-fraction", type=float, default=None, help="Share of real subjets that are targets. [default: 0.3]")
@click.option("--context-sees-targets", type=bool, default=None,
              help="false: I-JEPA style input masking (better in our benchmarks); true: the paper's (encoders see the whole jet, outputs masked). [default: false]")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="auto: CUDA when present. [default: auto]")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the networks.")
@click.option("--seed", type=int, default=None, help="Seeds init, reading order and masks. [default: 0]")
@click.option("--stop-after", type=int, default=None,
              help="Stop (with a checkpoint) after this step; the schedules still run to --steps.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any config field, e.g. --set model.depth=4 --set log_every=10 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt.")
@click.option("--io-only", is_flag=True, help="Run the input pipeline alone and print its jets/s.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@reports_errors(interrupted="interrupted; the checkpoint is saved, continue with --resume")
def pretrain(data, val, out, config_file, preset, steps, epochs, batch_size, lr, mask_fraction,
             context_sees_targets, device, compile_, seed, stop_after, overrides, resume, io_only, progress) -> None:
    """Pretrain J-JEPA: context encoder + predictor by gradient, target encoder by EMA.

    \b
    jjepa-train pretrain --data data/shards/train --val data/shards/val --out runs/pretrain --preset small --steps 20000
    jjepa-train pretrain ... --resume
    torchrun --nproc-per-node 8 -m jjepa.train pretrain ...
    """
    from jjepa.train.runners.pretrain import io_only as run_io_only
    from jjepa.train.runners.pretrain import pretrain as run_pretrain

    cli = {"data": data, "val": val, "out": out, "preset": preset, "steps": steps, "epochs": epochs,
           "batch_size": batch_size, "lr": lr, "mask_fraction": mask_fraction,
           "context_sees_targets": context_sees_targets, "device": device, "compile": compile_, "seed": seed,
           "stop_after": stop_after}
    section = _yaml_section(config_file, "pretrain")
    if steps is not None or epochs is not None:
        section = {k: v for k, v in section.items() if k not in ("steps", "epochs")}
    config = resolve_pretrain_config(section, {k: v for k, v in cli.items() if v is not None}, parse_pairs(overrides))
    if io_only:
        if config.data is None:
            raise JJepaError("--io-only needs --data")
        click.echo(json.dumps(run_io_only(config, progress=progress)))
        return
    metrics = run_pretrain(config, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(metrics))


def _finetune_options(func):
    """Options shared by ``finetune`` and ``scan``."""
    options = [
        click.option("--train", "train_dir", type=click.Path(file_okay=False, exists=True),
                     help="Labelled training shards (reduced to the label fraction)."),
        click.option("--val", type=click.Path(file_okay=False, exists=True), help="Validation shards (early stopping)."),
        click.option("--test", type=click.Path(file_okay=False, exists=True), help="Test shards (reported metrics)."),
        click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True),
                     help="Pretraining checkpoint (runs/…/checkpoints/last.pt)."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
                     help="YAML file whose 'finetune:' section sets defaults (e.g. params.yaml)."),
        click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                     help="Architecture for the scratch mode without --checkpoint."),
        click.option("--aggregation", type=click.Choice(AGGREGATIONS), default=None,
                     help="Subjets → jet: flatten (paper) or cls_attn. [default: flatten]"),
        click.option("--encoder", type=click.Choice(ENCODERS), default=None,
                     help="Pretrained encoder to start from. [default: target]"),
        click.option("--epochs", type=float, default=None, help="Passes over the labelled jets. [default: 20]"),
        click.option("--batch-size", type=int, default=None, help="Jets per step. [default: 256]"),
        click.option("--lr", type=float, default=None, help="Peak learning rate of the head. [default: 1e-3]"),
        click.option("--encoder-lr-scale", type=float, default=None,
                     help="Encoder learning rate relative to the head's (finetune mode). [default: 0.1]"),
        click.option("--device", type=click.Choice(DEVICES), default=None, help="auto: CUDA when present."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Any finetune config field, e.g. --set patience=3 (repeatable)."),
        click.option("--progress/--no-progress", default=True, help="Show a progress bar."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _finetune_layers(config_file, overrides, **cli) -> list[dict]:
    names = {"train_dir": "train"}
    values = {names.get(k, k): v for k, v in cli.items() if v is not None}
    return [_yaml_section(config_file, "finetune"), values, parse_pairs(overrides)]


@main.command()
@_finetune_options
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run folder.")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="finetune (all weights), freeze (linear probe) or scratch (random init). [default: finetune]")
@click.option("--label-fraction", type=float, default=None, help="Share of the training jets used (stratified).")
@click.option("--n-labels", type=int, default=None, help="Number of training jets used (stratified).")
@click.option("--seed", type=int, default=None, help="Seeds the label subset, the head and the order. [default: 0]")
@reports_errors
def finetune(config_file, overrides, progress, out, **cli) -> None:
    """Finetune a tagger on the pretrained encoder; report test-set metrics of the best-validation model.

    \b
    jjepa-train finetune --train S/train --val S/val --test S/test --checkpoint runs/pretrain/checkpoints/last.pt \\
        --mode finetune --label-fraction 0.01 --seed 0 --out runs/ft-1pc
    """
    from jjepa.train.runners.finetune import finetune as run_finetune

    config = resolve_finetune_config(*_finetune_layers(config_file, overrides, out=out, **cli))
    click.echo(json.dumps(run_finetune(config, progress=progress)))


def _list(value: str, kind):
    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of {kind.__name__}, not {value!r}") from None


@main.command()
@_finetune_options
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Scan folder (one subfolder per cell).")
@click.option("--fractions", default="0.001,0.01,0.1,1", help="Label fractions, comma-separated.")
@click.option("--modes", default="finetune,freeze,scratch",
              help="Modes, comma-separated: finetune (all weights), freeze (linear probe), scratch (random init).")
@click.option("--seeds", default="0,1,2", help="Seeds, comma-separated.")
@reports_errors(interrupted="interrupted; finished cells are kept, rerun the same command to go on")
def scan(config_file, overrides, progress, out, fractions, modes, seeds, **cli) -> None:
    """Label-efficiency scan: fractions × modes × seeds; finished cells are skipped on rerun.

    \b
    jjepa-train scan --train S/train --val S/val --test S/test --checkpoint runs/pretrain/checkpoints/last.pt \\
        --fractions 0.001,0.01,0.1,1 --modes finetune,freeze,scratch --seeds 0,1,2 --out runs/scan
    """
    from jjepa.train.runners.scan import scan as run_scan

    mode_list = _list(modes, str)
    bad = sorted(set(mode_list) - set(MODES))
    if bad:
        raise click.BadParameter(f"unknown modes {bad}; choose from {list(MODES)}", param_hint="--modes")
    base_mode = "scratch" if mode_list == ["scratch"] else "finetune"
    config = resolve_finetune_config(*_finetune_layers(config_file, overrides, out=out, mode=base_mode, **cli))
    rows = run_scan(config, _list(fractions, float), mode_list, _list(seeds, int), out, progress=progress)
    click.echo(f"{len(rows)} cells; summary in {Path(out) / 'summary.md'}")


@main.command()
@click.option("--data", required=True, type=click.Path(file_okay=False, exists=True), help="Shard folder to embed.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Pretraining checkpoint.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write.")
@click.option("--encoder", type=click.Choice(ENCODERS), default="target", help="Which pretrained encoder.")
@click.option("--batch-size", type=int, default=1024, help="Jets per forward pass.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto: CUDA when present.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@reports_errors
def embed(data, checkpoint, out, encoder, batch_size, device, progress) -> None:
    """Write jet-level representations (J, D) and labels of every jet of --data to an HDF5 file."""
    from jjepa.train.runners.embed import embed as run_embed

    n = run_embed(data, checkpoint, out, encoder=encoder, batch_size=batch_size, device=device, progress=progress)
    click.echo(f"{n} jets embedded into {out}")


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Report folder.")
@reports_errors
def evaluate(scans, out) -> None:
    """Compare the modes of finished scans: metrics.json, comparison.md, ROC overlay, rejection vs labels.

    \b
    jjepa-train evaluate runs/scan-finetune runs/scan-freeze runs/scan-scratch --out reports/evaluate
    """
    from jjepa.train.runners.evaluate import evaluate as run_evaluate

    click.echo(json.dumps(run_evaluate(list(scans), out)))
