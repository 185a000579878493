"""Per-particle inputs of the Particle Transformer (ParT), built from a shard batch as torch ops on the device.

ParT (Qu, Li, Qian, arXiv:2202.03772) reads every constituent of the jet as one sequence, not subjet
tokens. From a batch's ``particles`` (B, S, N, 4) of (pT [GeV], Δη, sin(Δφ/2), E [GeV]) relative to the
jet axis, ``particle_mask`` (B, S, N) and ``jets`` (B, 6) of (pT [GeV], η, φ [rad], E [GeV], m, n), the
(S, N) slots are flattened, the real constituents ordered by falling pT and the sequence cut or padded to
``max_particles``. Each constituent gets the kinematic features of the ParT paper (its "kin" set), with
the standardisation of ParT's published data configs, ``(x − shift)·scale`` clipped to ±5 as weaver does:

    log pT, log E, log pT/pT_jet, log E/E_jet, ΔR = hypot(Δη, Δφ), Δη, Δφ      (Δη, Δφ in radians, unscaled)

with Δφ = 2·asin(sin(Δφ/2)), exact since |Δφ| ≤ π. The pair features (ln Δ, ln kT, ln z, ln m²) come from
four-vectors (px, py, pz, E) [GeV]: η = η_jet + Δη, φ = Δφ (the frame rotated so the jet axis has φ = 0;
the pair features do not depend on φ's origin), E as stored. Padded positions are exactly 0 everywhere.

Every op here is one that ``torch.onnx.export(..., dynamo=False)`` traces and ONNX Runtime runs, so
``jjepa-train export`` puts this function inside the graph: the pT ordering is a ``topk`` over keys made
unique by the slot index (the order of a stable descending sort; a stable ``argsort`` does not export),
ΔR is ``sqrt(Δη² + Δφ²)`` (``hypot`` does not export). The four-vectors are computed in float64 from
exact identities (cos Δφ = 1 − 2s², sin Δφ = 2s·sqrt(1 − s²) with s = sin(Δφ/2); sinh η from exp) and
rounded to float32 once: ln m² of two nearly collinear constituents amplifies a last-bit difference of
pz a thousandfold, so a float32 ``sinh``, whose last bit differs between PyTorch and ONNX Runtime, moved
exported probabilities by ~1e-4; these four-vectors are bit-identical in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jjepa.common.errors import JJepaError

#: The 7 input features, in the order of ``PartInputs.features``' channel axis.
FEATURE_NAMES: tuple[str, ...] = ("log_pt", "log_e", "log_pt_rel", "log_e_rel", "delta_r", "delta_eta", "delta_phi")
#: (shift, scale) of each feature, as in ParT's data configs (JetClass_kin.yaml / top_kin.yaml); None: raw.
STANDARDISATION: tuple[tuple[float, float] | None, ...] = ((1.7, 0.7), (2.0, 0.7), (-4.7, 0.7), (-4.7, 0.7),
                                                           (0.2, 4.0), None, None)
#: weaver clips every standardised feature to ±CLIP.
CLIP = 5.0
#: Smallest pT or E [GeV] the logarithm sees; real constituents are far above it.
_LOG_FLOOR = 1e-6
#: Slot-index tie-break of the sort keys: key = pT·(1 − index·_TIE_STEP), float64. Distinct float32 pT differ
#: by a factor ≥ 1 + 2⁻²⁴, so the keys keep the pT order and equal pT fall in slot order as long as
#: S·N·_TIE_STEP ≪ 2⁻²⁴, i.e. S·N < _MAX_SLOTS.
_TIE_STEP = 2.0**-44
_MAX_SLOTS = 2**19


@dataclass
class PartInputs:
    """One batch as ParT's ``forward(x, v, mask)`` reads it.

    Attributes:
        features: (B, 7, P) float32 standardised ``FEATURE_NAMES``, 0 where padded.
        vectors: (B, 4, P) float32 four-vectors (px, py, pz, E) [GeV], 0 where padded.
        mask: (B, 1, P) bool, true where a real constituent sits; real ones come first, pT-ordered.
    """

    features: torch.Tensor
    vectors: torch.Tensor
    mask: torch.Tensor


def part_inputs(particles: torch.Tensor, particle_mask: torch.Tensor, jets: torch.Tensor,
                max_particles: int) -> PartInputs:
    """ParT's inputs of a batch: all constituents of each jet, pT-ordered, cut or zero-padded to ``max_particles``.

    Args:
        particles: (B, S, N, 4) float raw constituent features (pT [GeV], Δη, sin(Δφ/2), E [GeV]).
        particle_mask: (B, S, N) bool, true where a real constituent sits.
        jets: (B, 6) float jet (pT [GeV], η, φ, E [GeV], mass, constituents); pT, η and E are read.
        max_particles: P, the sequence length; a jet's softest constituents beyond P are dropped.
    """
    batch = particles.shape[0]
    flat = particles.reshape(batch, -1, 4).float()
    real = particle_mask.reshape(batch, -1)
    n_slots = flat.shape[1]
    if n_slots >= _MAX_SLOTS:
        raise JJepaError(f"{n_slots} constituent slots per jet (S·N): ParT's inputs handle fewer than {_MAX_SLOTS}")
    keep = min(max_particles, n_slots)
    slot = torch.arange(n_slots, dtype=torch.float64, device=flat.device)
    key = torch.where(real, flat[..., 0].clamp_min(_LOG_FLOOR), -1.0).double() * (1.0 - slot * _TIE_STEP)
    order = key.topk(keep, dim=1, largest=True, sorted=True).indices  # = a stable descending argsort's first keep
    flat = flat.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
    mask = real.gather(1, order)
    pt, deta, sdphi, energy = flat.unbind(-1)
    dphi = 2.0 * torch.asin(sdphi.clamp(-1.0, 1.0))
    jet_pt, jet_energy = (jets[:, i:i + 1].float() for i in (0, 3))
    jet_eta = jets[:, 1:2].double()
    log_pt = torch.log(pt.clamp_min(_LOG_FLOOR))
    log_e = torch.log(energy.clamp_min(_LOG_FLOOR))
    raw = (log_pt, log_e, log_pt - torch.log(jet_pt.clamp_min(_LOG_FLOOR)),
           log_e - torch.log(jet_energy.clamp_min(_LOG_FLOOR)), torch.sqrt(deta * deta + dphi * dphi), deta, dphi)
    features = torch.stack([x if norm is None else ((x - norm[0]) * norm[1]).clamp(-CLIP, CLIP)
                            for x, norm in zip(raw, STANDARDISATION, strict=True)], dim=1)
    vectors = _four_vectors(pt, sdphi, jet_eta + deta.double(), energy)
    if keep < max_particles:
        pad = (0, max_particles - keep)
        features, vectors = torch.nn.functional.pad(features, pad), torch.nn.functional.pad(vectors, pad)
        mask = torch.nn.functional.pad(mask, pad, value=False)
    mask = mask.unsqueeze(1)
    return PartInputs(features=torch.where(mask, features, 0.0), vectors=torch.where(mask, vectors, 0.0), mask=mask)


def _four_vectors(pt: torch.Tensor, sin_half_dphi: torch.Tensor, eta: torch.Tensor,
                  energy: torch.Tensor) -> torch.Tensor:
    """(B, 4, P) float32 (px, py, pz, E) [GeV] from pT [GeV], sin(Δφ/2), η (float64) and E [GeV], each (B, P).

    Computed in float64 from correctly rounded ops and ``exp`` (cos Δφ = 1 − 2s², sin Δφ = 2s·√(1 − s²),
    sinh η = (e^η − e^−η)/2), then rounded once to float32: PyTorch's and ONNX Runtime's ``exp`` differ at
    most in float64's last bit, which that rounding hides, so both give the same float32 four-vectors.
    """
    pt64, s = pt.double(), sin_half_dphi.double().clamp(-1.0, 1.0)
    px = pt64 * (1.0 - 2.0 * s * s)
    py = 2.0 * pt64 * s * torch.sqrt(1.0 - s * s)
    pz = pt64 * (0.5 * (torch.exp(eta) - torch.exp(-eta)))
    return torch.stack([px.float(), py.float(), pz.float(), energy], dim=1)


@dataclass(frozen=True)
class PartFeatures:
    """The ``part`` mode's input builder: a raw ``JetBatch`` (with ``jets``) → ``PartInputs`` on its device.

    Attributes:
        max_particles: P, the sequence length (``part.max_particles``, or S·N when that is None).
    """

    max_particles: int

    def from_batch(self, batch) -> PartInputs:
        """The inputs of a ``jjepa.train.data.loader.JetBatch`` already on the device."""
        return part_inputs(batch["particles"], batch["particle_mask"], batch["jets"], self.max_particles)
