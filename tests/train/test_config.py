"""Configuration: presets, the YAML → CLI layering, and clear errors."""

from __future__ import annotations

import pytest
from jjepa.train.config import (
    PRESETS,
    ConfigError,
    config_differences,
    config_from_dict,
    describe_differences,
    resolve_finetune_config,
    resolve_pretrain_config,
)


def test_layers_override_in_order_and_convert_types():
    yaml_section = {"preset": "tiny", "steps": 100, "lr": 1e-3, "model": {"depth": 3}}
    cli = {"lr": "2e-3", "model.embedding": "attention", "context_sees_targets": "true"}
    config = resolve_pretrain_config(yaml_section, cli)
    assert config.lr == 2e-3
    assert config.model.depth == 3 and config.model.embedding == "attention"
    assert config.model.embed_dim == PRESETS["tiny"].embed_dim
    assert config.context_sees_targets is True
    assert config_from_dict(config.to_dict()) == config


def test_paper_preset_matches_the_reference_scale():
    paper = PRESETS["paper"]
    assert (paper.embed_dim, paper.depth, paper.n_heads) == (1024, 24, 16)
    assert (paper.predictor_dim, paper.predictor_depth) == (512, 12)


@pytest.mark.parametrize(("layer", "message"), [
    ({"steps": 1, "bogus": 1}, "valid keys: .*'batch_size'"),
    ({"steps": 1, "model.bogus": 1}, r"model\.bogus.*valid keys in model: .*'depth'"),
    ({"steps": 1, "transform": {"bogus": 1}}, r"transform\.bogus"),
    ({"steps": 1, "preset": "huge"}, "presets: .*'tiny'"),
    ({"steps": "many"}, "steps: expected int"),
    ({"steps": 1, "epochs": 2}, "exactly one of steps and epochs"),
    ({"steps": 1, "model.n_heads": 5}, "must divide"),
    ({"steps": 1, "mask_fraction": 1.5}, "mask_fraction"),
])
def test_bad_configuration_is_a_clear_error(layer, message):
    with pytest.raises(ConfigError, match=message):
        resolve_pretrain_config(layer)


def test_config_differences_names_each_changed_setting_with_both_values():
    stored = resolve_pretrain_config({"preset": "tiny", "steps": 10, "data": "a"}).to_dict()
    stored["model"] = {**stored["model"], "n_subjets": 20, "n_particles": 30}  # bound from the shards
    wanted = resolve_pretrain_config({"preset": "tiny", "steps": 10, "data": "a", "lr": 0.1,
                                      "model.depth": 3, "transform.log_scale": 2.0}).to_dict()
    differences = config_differences(stored, wanted)
    assert differences == {"lr": (stored["lr"], 0.1), "model.depth": (stored["model"]["depth"], 3),
                           "transform.log_scale": (stored["transform"]["log_scale"], 2.0)}
    assert describe_differences({"lr": (0.001, 0.1)}) == "lr: 0.001 there, 0.1 now"
    assert config_differences(stored, wanted, frozenset({"lr", "model", "transform.log_scale"})) == {}
    # A bound shape asked for explicitly is compared; unset, it is not.
    asked = {**wanted, "model": {**wanted["model"], "n_subjets": 10}}
    assert config_differences(stored, asked, frozenset({"lr", "transform"})) == {
        "model.depth": (stored["model"]["depth"], 3), "model.n_subjets": (20, 10)}


def test_config_differences_unset_sections_none_values_and_new_fields():
    ours = resolve_finetune_config({"mode": "part", "train": "t", "val": "v", "test": "x", "out": "o"}).to_dict()
    stored = {**ours, "model": {"depth": 2}}  # a run's model, where the request leaves it to the checkpoint
    assert ours["model"] is None and config_differences(stored, ours) == {}
    # None is a value outside BOUND_AT_START: part.max_particles None (all particles) differs from 64.
    stored = {**ours, "part": {**ours["part"], "max_particles": 64}}
    wanted = {**ours, "part": {**ours["part"], "max_particles": None}, "n_labels": None}
    assert config_differences({**stored, "n_labels": 100}, wanted) == {
        "n_labels": (100, None), "part.max_particles": (64, None)}
    # A field written by an older version is absent: a difference unless new fields are allowed.
    older = {k: v for k, v in ours.items() if k != "min_subjets"}
    assert config_differences(older, ours) == {"min_subjets": (None, 0)}
    assert config_differences(older, ours, new_fields_ok=True) == {}


@pytest.mark.parametrize(("layer", "suggested"), [
    ({"preset": "tiny", "steps": 1, "model.dept": 3}, "model.depth"),
    ({"preset": "tiny", "steps": 1, "depth": 3}, "model.depth"),  # a section key without its section
    ({"steps": 1, "lrr": 1e-3}, "lr"),
])
def test_a_mistyped_key_gets_a_suggestion(layer, suggested):
    with pytest.raises(ConfigError, match=rf"\(did you mean '{suggested}'\?\)"):
        resolve_pretrain_config(layer)


def test_a_config_file_without_the_commands_section_is_refused(tmp_path):
    from click.testing import CliRunner
    from jjepa.train.cli import main as cli

    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 0.123\nsteps: 5\n")
    result = CliRunner().invoke(cli, ["pretrain", "--config", str(flat), "--data", str(tmp_path), "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "flat.yaml: no 'pretrain' section (top-level keys: ['lr', 'steps'])" in result.output
