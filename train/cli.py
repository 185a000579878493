"""``jjepa-train``: pretrain J-JEPA on subjet shards, finetune taggers, scan label fractions, embed jets.

Configuration flows one way: the dataclass defaults (``jjepa.train.config``), then the ``pretrain:``
(or ``finetune:``) section of ``--config`` (e.g. ``params.yaml``), then the options given on the command line, then
``--set key=value`` pairs (any field, ``model.depth=4`` for nested ones).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import click
import yaml
from jjepa.common.cli_utils import parse_pairs, progress_option, reports_errors, setup_logging
from jjepa.common.errors import JJepaError
from jjepa.train.config import (
    AGGREGATIONS,
    DEVICES,
    ENCODERS,
    MODES,
    PRECISIONS,
    PRESETS,
    FinetuneConfig,
    PretrainConfig,
    resolve_finetune_config,
    resolve_pretrain_config,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
def main(verbose: int) -> None:
    """J-JEPA on subjet shards (from ``jjepa-preprocess cluster``): pretrain, finetune, scan, evaluate, embed, predict, export."""
    setup_logging(verbose)


class ShardFolder(click.Path):
    """An existing shard folder (the ``--out`` of ``jjepa-preprocess cluster``); a raw input file given
    instead gets the command that makes shards of it."""

    def __init__(self):
        super().__init__(file_okay=False, exists=True)

    def convert(self, value, param, ctx):
        if Path(value).is_file():
            self.fail(f"{value} is a file, but this takes a folder of subjet shards; make them first with "
                      f"`jjepa-preprocess cluster {value} --out shards/NAME`", param, ctx)
        return super().convert(value, param, ctx)


SHARD_FOLDER = ShardFolder()


def _interrupted_run(out=None, **_) -> str:
    """What Ctrl-C (or SIGTERM) left of a pretraining or finetuning run, and how to go on."""
    if out is not None and (Path(out) / "checkpoints" / "last.pt").exists():
        return "interrupted; the checkpoint is saved, continue with the same command and --resume"
    return "interrupted before the first checkpoint: nothing to resume, rerun the same command"


def _yaml_section(path: str | None, section: str) -> dict:
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise JJepaError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict):
        raise JJepaError(f"{path}: expected a YAML mapping")
    if section not in loaded:
        raise JJepaError(f"{path}: no {section!r} section (top-level keys: {sorted(loaded)}); a --config file holds "
                         f"this command's settings under '{section}:', as params.yaml does")
    value = loaded.get(section) or {}
    if not isinstance(value, dict):
        raise JJepaError(f"{path}: the {section!r} section must be a mapping")
    return value


def field_option(config_cls, name: str, *decls: str, help: str, **kwargs):
    """A click option for the config field ``name``, whose ``[default: …]`` is read from the dataclass.

    The option's own default is None (not given), so the layers below it (the ``--config`` section,
    then the dataclass) decide; the help text shows the dataclass's value, never a hand-typed copy.
    """
    field = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    default = field.default if field.default is not dataclasses.MISSING else None
    shown = "" if default is None else f" [default: {_shown(default)}]"
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), name, default=None, help=help + shown, **kwargs)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _given(values: dict) -> dict:
    """The options given on the command line (None means not given)."""
    return {k: v for k, v in values.items() if v is not None}


_P = PretrainConfig


@main.command()
@field_option(_P, "data", help="Shard folder to pretrain on.", type=SHARD_FOLDER)
@field_option(_P, "val", help="Shard folder for the validation loss.", type=SHARD_FOLDER)
@field_option(_P, "out", "--out", "-o", help="Run folder (checkpoints, log, config); required.", type=click.Path(file_okay=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="YAML file whose 'pretrain:' section sets defaults (e.g. params.yaml, configs/paper.yaml).")
@field_option(_P, "preset", help="Model size; tiny trains in seconds on a CPU.", type=click.Choice(list(PRESETS)))
@field_option(_P, "steps", help="Optimizer steps; give this or --epochs.", type=int)
@field_option(_P, "epochs", help="Passes over --data, converted to steps.", type=float)
@field_option(_P, "batch_size", help="Jets per step and per process.", type=int)
@field_option(_P, "lr", help="Peak learning rate.", type=float)
@field_option(_P, "mask_fraction", help="Share of real subjets that are targets.", type=float)
@field_option(_P, "context_sees_targets", type=bool,
              help="false: I-JEPA style input masking; true: the paper's (encoders see the whole jet, outputs masked).")
@field_option(_P, "device", help="auto: CUDA when present.", type=click.Choice(DEVICES))
@field_option(_P, "precision", type=click.Choice(PRECISIONS),
              help="Autocast precision; fp16 uses a gradient scaler; auto: bf16 on CUDA, fp32 on the CPU.")
@field_option(_P, "compile", "--compile/--no-compile", help="torch.compile the networks.")
@field_option(_P, "seed", help="Seeds init, reading order and masks.", type=int)
@field_option(_P, "stop_after", help="Stop (with a checkpoint) after this step; the schedules still run to --steps.",
              type=int)
@field_option(_P, "keep_checkpoints", type=int,
              help="Also keep the last N checkpoints as checkpoints/step-<step>.pt (0: last.pt only).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any config field, e.g. --set model.depth=4 --set log_every=10 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoints/last.pt.")
@field_option(_P, "verify_shards", "--verify-shards/--no-verify-shards",
              help="Check each shard's sha256 against its manifest before training (files already verified and "
                   "unchanged are not hashed again).")
@click.option("--io-only", is_flag=True, help="Run the input pipeline alone and print its jets/s.")
@progress_option()
@reports_errors(interrupted=_interrupted_run)
def pretrain(config_file, overrides, resume, io_only, progress, **fields) -> None:
    """Pretrain J-JEPA: context encoder + predictor by gradient, target encoder by EMA.

    Every option sets the PretrainConfig field of its name; --set reaches every other field.

    \b
    jjepa-train pretrain --data data/shards/train --val data/shards/val --out runs/pretrain --preset small --steps 20000
    jjepa-train pretrain --config configs/paper.yaml --data ... --out runs/paper
    jjepa-train pretrain ... --resume
    torchrun --nproc-per-node 8 -m jjepa.train pretrain ...
    """
    from jjepa.train.runners.io_only import io_only as run_io_only
    from jjepa.train.runners.pretrain import pretrain as run_pretrain

    cli = _given(fields)
    section = _yaml_section(config_file, "pretrain")
    if "steps" in cli or "epochs" in cli:  # one of them on the command line replaces the YAML's choice
        section = {k: v for k, v in section.items() if k not in ("steps", "epochs")}
    config = resolve_pretrain_config(section, cli, parse_pairs(overrides))
    if io_only:
        if config.data is None:
            raise JJepaError("--io-only needs --data")
        click.echo(json.dumps(run_io_only(config, progress=progress)))
        return
    metrics = run_pretrain(config, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(metrics))


_F = FinetuneConfig


def _finetune_options(func):
    """Options shared by ``finetune`` and ``scan``; each sets the FinetuneConfig field of its name."""
    options = [
        field_option(_F, "train", help="Labelled training shards (reduced to the label fraction).",
                     type=SHARD_FOLDER),
        field_option(_F, "val", help="Validation shards (early stopping, the val block of metrics.json).",
                     type=SHARD_FOLDER),
        field_option(_F, "test", help="Test shards (reported metrics).", type=SHARD_FOLDER),
        field_option(_F, "checkpoint", help="Pretraining checkpoint (runs/…/checkpoints/last.pt).",
                     type=click.Path(dir_okay=False, exists=True)),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
                     help="YAML file whose 'finetune:' section sets defaults (e.g. params.yaml, configs/paper.yaml)."),
        field_option(_F, "preset", help="Architecture for the scratch mode without --checkpoint.",
                     type=click.Choice(list(PRESETS))),
        field_option(_F, "aggregation", help="Subjets → jet: flatten (paper) or cls_attn.",
                     type=click.Choice(AGGREGATIONS)),
        field_option(_F, "encoder", help="Pretrained encoder to start from.", type=click.Choice(ENCODERS)),
        field_option(_F, "epochs", help="Passes over the labelled jets; at least min_steps steps are taken (few labels).",
                     type=float),
        field_option(_F, "batch_size", help="Jets per step.", type=int),
        field_option(_F, "lr", help="Peak learning rate of the head.", type=float),
        field_option(_F, "encoder_lr_scale", help="Encoder learning rate relative to the head's (finetune mode).",
                     type=float),
        field_option(_F, "device", help="auto: CUDA when present.", type=click.Choice(DEVICES)),
        field_option(_F, "precision", type=click.Choice(PRECISIONS),
                     help="Autocast precision (fp16: gradient scaler); metrics from fp32 logits. "
                          "auto: bf16 on CUDA, fp32 on the CPU."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Any finetune config field, e.g. --set patience=3 (repeatable)."),
        progress_option(),
        field_option(_F, "verify_shards", "--verify-shards/--no-verify-shards",
                     help="Check each shard's sha256 against its manifest before training (files already verified "
                          "and unchanged are not hashed again)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _finetune_layers(config_file, overrides, **cli) -> list[dict]:
    return [_yaml_section(config_file, "finetune"), _given(cli), parse_pairs(overrides)]


@main.command()
@_finetune_options
@field_option(_F, "out", "--out", "-o", help="Run folder.", type=click.Path(file_okay=False))
@field_option(_F, "mode", type=click.Choice(MODES),
              help="finetune (all weights), freeze (linear probe), scratch (random init) or part (the Particle "
                   "Transformer from weaver-core, from scratch: the supervised reference; size with --set part.*).")
@field_option(_F, "label_fraction", help="Share of the training jets used (stratified); without it or --n-labels, all.",
              type=float)
@field_option(_F, "n_labels", help="Number of training jets used (stratified, exact).", type=int)
@field_option(_F, "seed", help="Seeds the label subset, the head and the order.", type=int)
@field_option(_F, "compile", "--compile/--no-compile", help="torch.compile the classifier.")
@field_option(_F, "stop_after", help="Stop (with checkpoints/last.pt) after this step; continue with --resume.",
              type=int)
@click.option("--resume", is_flag=True, help="Continue the unfinished run of OUT/checkpoints/last.pt exactly.")
@reports_errors(interrupted=_interrupted_run)
def finetune(config_file, overrides, progress, out, resume, **cli) -> None:
    """Finetune a tagger on the pretrained encoder; report test-set metrics of the best-validation model.

    \b
    jjepa-train finetune --train S/train --val S/val --test S/test --checkpoint runs/pretrain/checkpoints/last.pt \\
        --mode finetune --label-fraction 0.01 --seed 0 --out runs/ft-1pc
    jjepa-train finetune ... --out runs/ft-1pc --resume
    torchrun --nproc-per-node 8 -m jjepa.train finetune ...
    """
    from jjepa.train.runners.finetune import finetune as run_finetune

    config = resolve_finetune_config(*_finetune_layers(config_file, overrides, out=out, **cli))
    metrics = run_finetune(config, progress=progress, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(metrics))


def _list(value: str, kind, option: str | None = None):
    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of {kind.__name__}, not {value!r}",
                                 param_hint=option) from None


@main.command()
@_finetune_options
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Scan folder (one subfolder per cell).")
@click.option("--fractions", default="0.001,0.01,0.1,1", help="Label fractions, comma-separated.")
@click.option("--modes", default="finetune,freeze,scratch",
              help="Modes, comma-separated: finetune (all weights), freeze (linear probe), scratch (random init), "
                   "part (Particle Transformer from scratch).")
@click.option("--seeds", default="0,1,2", help="Seeds, comma-separated.")
@reports_errors(interrupted="interrupted; finished cells are kept, rerun the same command to go on")
def scan(config_file, overrides, progress, out, fractions, modes, seeds, **cli) -> None:
    """Label-efficiency scan: fractions × modes × seeds; finished cells are skipped on rerun.

    A finished cell made with other settings (another --lr, say) stops the scan rather than being mixed in.

    \b
    jjepa-train scan --train S/train --val S/val --test S/test --checkpoint runs/pretrain/checkpoints/last.pt \\
        --fractions 0.001,0.01,0.1,1 --modes finetune,freeze,scratch --seeds 0,1,2 --out runs/scan
    """
    from jjepa.train.runners.scan import scan as run_scan

    mode_list = _list(modes, str)
    bad = sorted(set(mode_list) - set(MODES))
    if bad:
        raise click.BadParameter(f"unknown modes {bad}; choose from {list(MODES)}", param_hint="--modes")
    # The shared config is checked as the most demanding mode of the scan: a checkpoint for finetune/freeze,
    # a preset or checkpoint for scratch; part needs neither.
    base_mode = next((m for m in ("finetune", "freeze", "scratch") if m in mode_list), "part")
    config = resolve_finetune_config(*_finetune_layers(config_file, overrides, out=out, mode=base_mode, **cli))
    rows = run_scan(config, _list(fractions, float, "--fractions"), mode_list, _list(seeds, int, "--seeds"), out,
                    progress=progress)
    click.echo(f"{len(rows)} cells; summary in {Path(out) / 'summary.md'}")


@main.command()
@click.option("--data", required=True, type=SHARD_FOLDER, help="Shard folder to embed.")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Pretraining checkpoint.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write.")
@click.option("--encoder", type=click.Choice(ENCODERS), default="target", help="Which pretrained encoder.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, help="Jets per forward pass.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto: CUDA when present.")
@progress_option()
@reports_errors
def embed(data, checkpoint, out, encoder, batch_size, device, progress) -> None:
    """Write jet-level representations (J, D) and labels of every jet of --data to an HDF5 file."""
    from jjepa.train.runners.embed import embed as run_embed

    n = run_embed(data, checkpoint, out, encoder=encoder, batch_size=batch_size, device=device, progress=progress)
    click.echo(f"{n} jets embedded into {out}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Finetuned tagger: runs/<finetune>/checkpoints/best.pt.")
@click.option("--data", required=True, type=SHARD_FOLDER,
              help="Shard folder to score (same S, N and clustering as the tagger's training shards).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="Output file; the suffix picks the format: .h5, .parquet or .root (TTree 'jets').")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, help="Jets per forward pass.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto: CUDA when present.")
@progress_option()
@reports_errors
def predict(checkpoint, data, out, batch_size, device, progress) -> None:
    """Score every jet of --data with a finetuned tagger: one row per jet with score_<class>, label (-1 unknown),
    jet_pt, jet_eta, jet_phi, jet_mass, jet_nconstituents, jet_nsubjets, shard, row.

    \b
    jjepa-train predict --checkpoint runs/ft/checkpoints/best.pt --data shards/mine --out scores.parquet
    """
    from jjepa.train.runners.predict import predict as run_predict

    summary = run_predict(checkpoint, data, out, batch_size=batch_size, device=device, progress=progress)
    click.echo(f"{summary['n_jets']} jets scored into {out} (classes {', '.join(summary['classes'])})")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Finetuned tagger: runs/<finetune>/checkpoints/best.pt.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="ONNX file to write (*.onnx); the description goes beside it as *.json.")
@click.option("--data", type=SHARD_FOLDER, default=None,
              help="Shard folder whose first jets check ONNX Runtime against PyTorch [default: synthetic jets].")
@click.option("--check-jets", type=click.IntRange(min=1), default=256, help="Jets in the check batch.")
@reports_errors
def export(checkpoint, out, data, check_jets) -> None:
    """Export a finetuned tagger as ONNX (dynamic batch) taking the shard arrays particles, particle_mask,
    subjets, subjet_mask (and jets for a ParT tagger, mode part), with the input transform inside the graph;
    plus a JSON description.

    \b
    jjepa-train export --checkpoint runs/ft/checkpoints/best.pt --out tagger.onnx --data shards/test
    """
    from jjepa.train.runners.export import export as run_export

    description = run_export(checkpoint, out, data=data, n_check=check_jets)
    click.echo(f"{out}: classes {', '.join(description['classes'])}; ONNX Runtime vs PyTorch max |diff| "
               f"{description['check']['max_abs_diff']:.2g} on {description['check']['n_jets']} jets")


@main.command()
@click.argument("scans", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option("--resamples", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Bootstrap resamples of the paired comparisons.")
@reports_errors
def evaluate(scans, out, resamples) -> None:
    """Compare the modes of finished scans: table with intervals, paired differences, ROC overlay, rejection vs labels.

    Writes metrics.json, comparison.md, paired.csv (every mode against scratch, and against part when
    present: AUC difference and rejection ratio with 68 %/95 % intervals), label_efficiency.csv,
    roc.png and rejection_vs_labels.png.

    \b
    jjepa-train evaluate runs/scan-finetune runs/scan-freeze runs/scan-scratch --out reports/evaluate
    """
    from jjepa.train.runners.evaluate import evaluate as run_evaluate

    click.echo(json.dumps(run_evaluate(list(scans), out, n_resamples=resamples)))
