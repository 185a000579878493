"""Token packing: gather the subjets a network needs to the front of a shorter sequence.

A jet has S subjet slots, of which only some are real, and a J-JEPA step splits the real ones into
context (~70%) and targets (~30%). Computing every slot and masking the outputs afterwards costs
the same for every masking; packing (as I-JEPA does for image patches) gathers the selected slots
of each jet, in their slot order, to the front of a sequence whose length L is the largest number
selected in the batch, so the cost scales with the subjets actually used. Attention masks the
padded tail of each packed row, so a packed network computes the same outputs as the masked one
(to float rounding); ``scatter_slots`` puts them back into (B, S, D).

The plans are cheap index computations; the trainer draws its masks on the CPU and builds the
plans there too (``plan_jepa``), so finding L never waits for the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jjepa.train.data.transform import ModelInputs


@dataclass
class PackPlan:
    """Which slots of each jet go where in the packed sequence.

    Attributes:
        index: (B, L) int64, the slot (0..S-1) that packed position l holds; all distinct within a
            row, the selected slots first in slot order, then unselected ones (ignored).
        valid: (B, L) bool, true at the positions that hold a selected slot.
    """

    index: torch.Tensor
    valid: torch.Tensor

    def to(self, device: torch.device) -> PackPlan:
        """The plan on ``device`` (asynchronous copies; the CPU plan should be pinned for overlap)."""
        return PackPlan(self.index.to(device, non_blocking=True), self.valid.to(device, non_blocking=True))


def pack_plan(selected: torch.Tensor) -> PackPlan:
    """The plan that packs the true slots of ``selected`` (B, S) bool; L = max(1, most true in a row).

    On a CUDA tensor, finding L synchronises with the device: build plans from CPU masks in hot loops.
    """
    counts = selected.sum(dim=1)
    length = max(1, int(counts.max())) if selected.shape[0] else 1
    length = min(length, selected.shape[1])
    # A stable descending sort of the 0/1 mask puts the selected slots first, each group in slot order.
    index = torch.argsort(selected.to(torch.uint8), dim=1, descending=True, stable=True)[:, :length]
    valid = torch.arange(length, device=selected.device) < counts.unsqueeze(1)
    return PackPlan(index, valid)


def gather_slots(x: torch.Tensor, plan: PackPlan) -> torch.Tensor:
    """(B, S, ...) → (B, L, ...): the slots of ``plan``, in packed order."""
    index = plan.index.view(*plan.index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def scatter_slots(packed: torch.Tensor, plan: PackPlan, n_slots: int) -> torch.Tensor:
    """(B, L, D) packed outputs → (B, S, D), 0 at every slot not selected by ``plan``."""
    values = torch.where(plan.valid.unsqueeze(-1), packed, 0.0)
    index = plan.index.unsqueeze(-1).expand(-1, -1, packed.shape[-1])
    out = packed.new_zeros(packed.shape[0], n_slots, packed.shape[-1])
    return out.scatter(1, index, values)


def pack_inputs(inputs: ModelInputs, plan: PackPlan) -> ModelInputs:
    """A batch of L-slot jets holding the selected subjets; unselected positions are padding (masks false)."""
    valid = plan.valid
    return ModelInputs(
        particles=gather_slots(inputs.particles, plan),
        particle_mask=gather_slots(inputs.particle_mask, plan) & valid.unsqueeze(-1),
        subjets=gather_slots(inputs.subjets, plan),
        subjet_mask=gather_slots(inputs.subjet_mask, plan) & valid,
    )


@dataclass
class JEPAPlans:
    """The three packings of one J-JEPA step.

    Attributes:
        real: all real subjets (what the target encoder sees).
        context: the context subjets (what the I-JEPA style context encoder and the predictor's
            context tokens use).
        target: the target subjets (the predictor's queries).
    """

    real: PackPlan
    context: PackPlan
    target: PackPlan

    def to(self, device: torch.device) -> JEPAPlans:
        return JEPAPlans(self.real.to(device), self.context.to(device), self.target.to(device))


def plan_jepa(subjet_mask: torch.Tensor, target_mask: torch.Tensor) -> JEPAPlans:
    """The plans of a step from its (B, S) bool masks (on the CPU in the trainer: no device sync)."""
    return JEPAPlans(real=pack_plan(subjet_mask), context=pack_plan(subjet_mask & ~target_mask),
                     target=pack_plan(target_mask))
