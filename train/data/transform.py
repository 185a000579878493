"""The input transform: raw shard features → network inputs, in one place, as torch ops on the device.

Shards store, per constituent and per subjet, (pT [GeV], Δη, sin(Δφ/2), E [GeV]). The networks see
(log pT − shift)·scale, (log E − shift)·scale, Δη·angle_scale and sin(Δφ/2)·angle_scale, so every
input is of order one; padded slots stay exactly 0 whatever the shard holds there. The transform's
parameters are a dataclass recorded in the checkpoint, so finetuning applies the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Smallest pT or E [GeV] the logarithm sees; real constituents are far above it.
_LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class InputTransform:
    """Parameters of the feature transform (defaults suit 0.5–1 TeV jets with R=0.8).

    Attributes:
        particle_log_pt_shift: subtracted from log(pT/GeV) of constituents.
        particle_log_energy_shift: subtracted from log(E/GeV) of constituents.
        subjet_log_pt_shift: subtracted from log(pT/GeV) of subjets.
        subjet_log_energy_shift: subtracted from log(E/GeV) of subjets.
        log_scale: multiplies every shifted logarithm.
        angle_scale: multiplies Δη and sin(Δφ/2) (both within about ±0.8 and ±0.4 for R=0.8).
    """

    particle_log_pt_shift: float = 1.7
    particle_log_energy_shift: float = 2.0
    subjet_log_pt_shift: float = 4.0
    subjet_log_energy_shift: float = 4.5
    log_scale: float = 0.7
    angle_scale: float = 2.5

    def _features(self, x: torch.Tensor, mask: torch.Tensor, pt_shift: float, energy_shift: float) -> torch.Tensor:
        """(..., 4) raw (pT, Δη, sin(Δφ/2), E) → transformed, 0 where ``mask`` (...) is false."""
        pt, deta, sdphi, energy = x.unbind(-1)
        out = torch.stack([
            (torch.log(pt.clamp_min(_LOG_FLOOR)) - pt_shift) * self.log_scale,
            deta * self.angle_scale,
            sdphi * self.angle_scale,
            (torch.log(energy.clamp_min(_LOG_FLOOR)) - energy_shift) * self.log_scale,
        ], dim=-1)
        return torch.where(mask.unsqueeze(-1), out, 0.0)

    def __call__(self, particles: torch.Tensor, particle_mask: torch.Tensor, subjets: torch.Tensor,
                 subjet_mask: torch.Tensor) -> ModelInputs:
        """Transform a batch (on any device).

        Args:
            particles: (B, S, N, 4) float32 raw constituent features.
            particle_mask: (B, S, N) bool, true where a real constituent sits.
            subjets: (B, S, 4) float32 raw subjet four-vectors.
            subjet_mask: (B, S) bool, true where a real subjet sits.
        """
        return ModelInputs(
            particles=self._features(particles, particle_mask, self.particle_log_pt_shift,
                                     self.particle_log_energy_shift),
            particle_mask=particle_mask,
            subjets=self._features(subjets, subjet_mask, self.subjet_log_pt_shift, self.subjet_log_energy_shift),
            subjet_mask=subjet_mask,
        )


@dataclass
class ModelInputs:
    """A transformed batch, what the encoders and the predictor read.

    Attributes:
        particles: (B, S, N, 4) transformed constituent features, 0 where padded.
        particle_mask: (B, S, N) bool.
        subjets: (B, S, 4) transformed subjet features, 0 where padded; [..., 1:3] is the subjet's
            position (scaled Δη, sin(Δφ/2)).
        subjet_mask: (B, S) bool.
    """

    particles: torch.Tensor
    particle_mask: torch.Tensor
    subjets: torch.Tensor
    subjet_mask: torch.Tensor

    @property
    def subjet_positions(self) -> torch.Tensor:
        """(B, S, 2) scaled (Δη, sin(Δφ/2)) of each subjet."""
        return self.subjets[..., 1:3]


def batch_inputs(batch, transform: InputTransform, device: torch.device) -> ModelInputs:
    """Copy a raw batch (``jjepa.train.data.loader.JetBatch``) to ``device`` (asynchronously from pinned
    memory) and transform it there."""
    batch = batch.to(device)
    return transform(batch["particles"], batch["particle_mask"], batch["subjets"], batch["subjet_mask"])
