"""J-JEPA, top to bottom as in the paper's figure: embedding → encoders → predictor → loss.

1. Every subjet is embedded from its constituents and the subjet transformer encodes the jet
   (``SubjetTransformer``); the context encoder learns by gradient, the target encoder is its EMA
   (``jjepa.train.mechanics.ema``).
2. Masks (``jjepa.train.mechanics.masking``) split each jet's real subjets into targets (~30%) and context.
   By default the context encoder attends to the context subjets only (I-JEPA style); with
   ``context_sees_targets=True`` (the paper's scheme) both encoders see the whole jet and the
   outputs are masked afterwards, which pretrained worse in ``bench/label_efficiency.py``.
3. The predictor reads the context representations and one query per target (mask token +
   position embedding) and predicts the target encoder's representations of the targets.
4. The loss is the squared L2 distance between prediction and target representation, averaged
   over the feature dimension and over the real target subjets of the batch.

Packing (``jjepa.train.model.packing``, the default): every network reads only the tokens it needs,
gathered to the front of a shorter sequence: the target encoder the real subjets, the I-JEPA style
context encoder the context subjets, the predictor the context tokens and the target queries. The
cost of a step then scales with the real, context and target subjets instead of S; the results equal
the slot-aligned masked computation (``plans=None``) to float rounding (tests/train/test_packing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jjepa.train.config import ModelConfig
from jjepa.train.data.transform import ModelInputs
from jjepa.train.model.packing import JEPAPlans, gather_slots, pack_inputs, plan_jepa, scatter_slots
from jjepa.train.model.predictor import Predictor
from jjepa.train.model.subjet_transformer import SubjetTransformer
from torch import nn


@dataclass
class JEPAOutput:
    """One forward pass: the loss and what the diagnostics read.

    Attributes:
        loss: scalar, mean squared error over target subjets and dimensions.
        predictions: (B, S, D), 0 off target.
        target_reps: (B, S, D) target-encoder representations of every real subjet (no gradient).
        target_mask: (B, S) bool.
        subjet_mask: (B, S) bool, the real subjets.
    """

    loss: torch.Tensor
    predictions: torch.Tensor
    target_reps: torch.Tensor
    target_mask: torch.Tensor
    subjet_mask: torch.Tensor


class JEPA(nn.Module):
    """The trainable part: context encoder and predictor (the target encoder is kept outside, as an EMA).

    Args:
        config: model hyperparameters with ``n_subjets`` and ``n_particles`` set (from the data).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.n_subjets is None or config.n_particles is None:
            raise ValueError("ModelConfig.n_subjets and n_particles must be set (from the shards' manifest)")
        self.config = config
        self.context_encoder = SubjetTransformer(config)
        self.predictor = Predictor(config)
        self.apply(_init_weights)

    def forward(self, inputs: ModelInputs, target_mask: torch.Tensor, context_sees_targets: bool,
                plans: JEPAPlans | None = None) -> torch.Tensor:
        """Context encoder + predictor: (B, S, D) predictions at the target slots, 0 elsewhere.

        Args:
            inputs: the transformed batch.
            target_mask: (B, S) bool, a subset of the real subjets.
            context_sees_targets: True (paper): encode the whole jet, then keep the context
                outputs; False (I-JEPA): the encoder attends to the context subjets only.
            plans: the step's packings (``plan_jepa``): encode and predict packed sequences.
                None: compute all S slots and mask (the reference; same results, more FLOPs).
        """
        context_mask = inputs.subjet_mask & ~target_mask
        if plans is None:
            encoded = self.context_encoder(inputs, None if context_sees_targets else context_mask)
            return self.predictor(encoded, context_mask, target_mask, inputs.subjets)
        n_slots = target_mask.shape[1]
        if context_sees_targets:
            whole = self.context_encoder(pack_inputs(inputs, plans.real))
            context = gather_slots(scatter_slots(whole, plans.real, n_slots), plans.context)
        else:
            context = self.context_encoder(pack_inputs(inputs, plans.context))
        predicted = self.predictor.predict(context, gather_slots(inputs.subjets, plans.context), plans.context.valid,
                                           gather_slots(inputs.subjets, plans.target), plans.target.valid)
        return scatter_slots(predicted, plans.target, n_slots)


def jepa_loss(predictions: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Mean over target subjets of the mean squared difference over the D dimensions.

    Args:
        predictions, targets: (B, S, D).
        target_mask: (B, S) bool; slots outside it do not count.
    """
    per_subjet = (predictions.float() - targets.float()).pow(2).mean(dim=-1)
    weights = target_mask.to(per_subjet.dtype)
    return (per_subjet * weights).sum() / weights.sum().clamp_min(1.0)


def jepa_forward(model: nn.Module, target_encoder: nn.Module, inputs: ModelInputs, target_mask: torch.Tensor,
                 context_sees_targets: bool, plans: JEPAPlans | None = None, pack: bool = True) -> JEPAOutput:
    """One J-JEPA forward pass (``model`` may be a ``JEPA`` or its DDP / compiled wrapper).

    1. target encoder on the whole jet, no gradient, outputs kept at the targets;
    2. context encoder + predictor;
    3. L2 loss at the targets.

    Args:
        plans: the packings of this step on the device (the trainer builds them from its CPU masks);
            None with ``pack``: built here from the device masks (one device synchronisation).
        pack: False: the slot-aligned masked computation (the reference the tests compare with).
    """
    if pack and plans is None:
        plans = plan_jepa(inputs.subjet_mask, target_mask)
    if not pack:
        plans = None
    with torch.no_grad():
        if plans is None:
            target_reps = target_encoder(inputs)
        else:
            target_reps = scatter_slots(target_encoder(pack_inputs(inputs, plans.real)), plans.real,
                                        target_mask.shape[1])
    predictions = model(inputs, target_mask, context_sees_targets, plans)
    loss = jepa_loss(predictions, target_reps, target_mask)
    return JEPAOutput(loss, predictions, target_reps, target_mask, inputs.subjet_mask)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights (std 0.02) and zero biases, as in ViT / I-JEPA."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
