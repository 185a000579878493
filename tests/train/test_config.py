"""Configuration: presets, the YAML → CLI layering, and clear errors."""

from __future__ import annotations

import pytest
from jjepa.train.config import PRESETS, ConfigError, config_from_dict, resolve_pretrain_config


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
