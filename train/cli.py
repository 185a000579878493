"""``jjepa-train``: pretrain J-JEPA on subjet shards (finetuning arrives with its issue).

Configuration flows one way: the dataclass defaults (``jjepa.train.config``), then the ``pretrain:``
section of ``--config`` (e.g. ``params.yaml``), then the options given on the command line, then
``--set key=value`` pairs (any field, ``model.depth=4`` for nested ones).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import yaml
from jjepa.common.cli_utils import reports_errors, setup_logging
from jjepa.common.errors import JJepaError
from jjepa.train.config import DEVICES, PRESETS, resolve_pretrain_config


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More log output (debug).")
def main(verbose: int) -> None:
    """Pretrain J-JEPA jet representations on subjet shards (from ``jjepa-preprocess cluster``)."""
    setup_logging(verbose)


def _yaml_section(path: str | None, section: str) -> dict:
    if path is None:
        return {}
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise JJepaError(f"{path}: expected a YAML mapping")
    value = loaded.get(section, {}) or {}
    if not isinstance(value, dict):
        raise JJepaError(f"{path}: the {section!r} section must be a mapping")
    return value


def _pairs(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JJepaError(f"--set expects KEY=VALUE, not {item!r}")
        out[key.strip()] = value.strip()
    return out


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
              help="true (paper): encoders see the whole jet, outputs masked; false: I-JEPA style input masking.")
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
@reports_errors
def pretrain(data, val, out, config_file, preset, steps, epochs, batch_size, lr, mask_fraction,
             context_sees_targets, device, compile_, seed, stop_after, overrides, resume, io_only, progress) -> None:
    """Pretrain J-JEPA: context encoder + predictor by gradient, target encoder by EMA.

    \b
    jjepa-train pretrain --data data/shards/train --val data/shards/val --out runs/pretrain --preset small --steps 20000
    jjepa-train pretrain ... --resume
    torchrun --nproc-per-node 8 -m jjepa.train pretrain ...
    """
    from jjepa.train.pretrain import io_only as run_io_only
    from jjepa.train.pretrain import pretrain as run_pretrain

    cli = {"data": data, "val": val, "out": out, "preset": preset, "steps": steps, "epochs": epochs,
           "batch_size": batch_size, "lr": lr, "mask_fraction": mask_fraction,
           "context_sees_targets": context_sees_targets, "device": device, "compile": compile_, "seed": seed,
           "stop_after": stop_after}
    section = _yaml_section(config_file, "pretrain")
    if steps is not None or epochs is not None:
        section = {k: v for k, v in section.items() if k not in ("steps", "epochs")}
    config = resolve_pretrain_config(section, {k: v for k, v in cli.items() if v is not None}, _pairs(overrides))
    if io_only:
        if config.data is None:
            raise JJepaError("--io-only needs --data")
        click.echo(json.dumps(run_io_only(config, progress=progress)))
        return
    metrics = run_pretrain(config, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(json.dumps(metrics))
