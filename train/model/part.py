"""The Particle Transformer (ParT) of weaver-core as a jjepa tagger: the supervised reference of the ``part`` mode.

ParT (Qu, Li, Qian, "Particle Transformer for Jet Tagging", arXiv:2202.03772) is the field's standard
supervised tagger; jjepa trains it from scratch in the finetuning harness (same label subsets, same
validation early stopping, same test jets) so that pretraining is compared with the best supervised
model, not only with its own architecture from random initialisation. The network is weaver-core's
``weaver.nn.model.ParticleTransformer.ParticleTransformer`` with the configuration of the ParT
repository's ``example_ParticleTransformer.py`` (7 kinematic inputs, 4 pair features, no pre-activation
in the pair embedding, class-attention blocks without dropout, no extra fully connected layers); only
the size comes from ``PartConfig``. weaver-core is an optional dependency (``pip install -e
".[baselines]"``), imported only when this model is built.
"""

from __future__ import annotations

import logging

import torch
from jjepa.common.errors import JJepaError
from jjepa.train.config import PartConfig
from jjepa.train.data.part_inputs import FEATURE_NAMES, PartInputs
from torch import nn

log = logging.getLogger(__name__)

#: Pair features of ParT: ln Δ, ln kT, ln z, ln m² of every two constituents.
PAIR_FEATURES = 4


def _particle_transformer_class():
    """weaver-core's ``ParticleTransformer``, or a one-line error telling how to install it."""
    try:
        from weaver.nn.model.ParticleTransformer import ParticleTransformer
    except ImportError as err:
        raise JJepaError(f"mode part needs weaver-core ({err}); install it with: pip install -e \".[baselines]\" "
                         "(or pip install 'weaver-core>=0.4')") from None
    weaver_log = logging.getLogger("weaver")
    if weaver_log.level == logging.NOTSET:
        # weaver logs every constructor argument at INFO; jjepa logs the size itself.
        weaver_log.setLevel(logging.WARNING)
    return ParticleTransformer


class _Fp32Head(nn.Sequential):
    """weaver's final classification layers, run in fp32 outside autocast (same parameters and keys).

    Under bf16 autocast the logits would keep 8 mantissa bits: scores tie in the high-purity tail where
    1/εB at εS = 0.3 is read, which would bias the supervised reference against J-JEPA (whose head also
    runs in fp32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


class PartTagger(nn.Module):
    """ParT over ``PartInputs`` → logits (B, C), or probabilities (B, C) when built ``for_inference``.

    Args:
        config: the size (``PartConfig``).
        n_classes: C.
        for_inference: weaver's build for export: no sequence trimmer, the pair embedding computed densely
            with ONNX-exportable ops, and the softmax inside (the output is probabilities). Same weights.
    """

    def __init__(self, config: PartConfig, n_classes: int, for_inference: bool = False):
        super().__init__()
        particle_transformer = _particle_transformer_class()
        self.config, self.n_classes, self.for_inference = config, n_classes, for_inference
        d = config.embed_dim
        self.net = particle_transformer(
            input_dim=len(FEATURE_NAMES), num_classes=n_classes, pair_input_dim=PAIR_FEATURES,
            use_pre_activation_pair=False, embed_dims=[d, 4 * d, d], pair_embed_dims=[config.pair_embed_dim] * 3,
            num_heads=config.num_heads, num_layers=config.num_layers, num_cls_layers=config.num_cls_layers,
            block_params=None, cls_block_params={"dropout": 0, "attn_dropout": 0, "activation_dropout": 0},
            fc_params=[], activation="gelu", trim=True, for_inference=for_inference)
        self.net.fc.__class__ = _Fp32Head  # the same Sequential, its forward in fp32
        log.info("ParT: %d parameters (embed %d, pair embed %d, %d heads, %d + %d blocks)",
                 sum(p.numel() for p in self.parameters()), d, config.pair_embed_dim, config.num_heads,
                 config.num_layers, config.num_cls_layers)

    def forward(self, inputs: PartInputs) -> torch.Tensor:
        return self.net(inputs.features, v=inputs.vectors, mask=inputs.mask)

    def settle(self) -> PartTagger:
        """Mark weaver's sequence trimmer past its warm-up, as it is in a trained model; return self.

        In eval mode the trimmer cuts each batch to its longest jet, but only after its first few calls
        (a counter that is not in the state dict). A model rebuilt from a checkpoint thus scores its
        first batches untrimmed, which moves probabilities by ~1e-7; settled, it computes exactly what
        finetuning's test predictions computed with the same batches.
        """
        trimmer = self.net.trimmer
        if trimmer.enabled:
            trimmer._counter.fill_(trimmer.warmup_steps)
        return self

    def for_export(self) -> PartTagger:
        """A ``for_inference`` copy with these weights, in eval mode: what ``jjepa-train export`` traces."""
        twin = PartTagger(self.config, self.n_classes, for_inference=True)
        twin.load_state_dict(self.state_dict())
        return twin.eval()
