"""Draw the README's one-figure overview of J-JEPA on a real simulated top jet.

Three panels, left to right:

1. *a jet → subjets*: one hadronic top jet simulated with Pythia 8 (``jjepa.preprocess.simulate``),
   its constituents in the (Δη, Δφ) plane around the jet axis, marker area ∝ pT, coloured by the
   Cambridge–Aachen R=0.2 subjet the project's Numba kernel (``jjepa.preprocess.cluster``) puts
   them in.
2. *context and targets*: the same jet's subjets as tokens (discs at the subjet axes, area ∝ subjet
   pT); about 30% are targets (grey, hatched), drawn with the trainer's own ``sample_targets``, the
   rest are the context.
3. the J-JEPA training step as a schematic: context encoder and predictor against an EMA target
   encoder, L2 loss in representation space.

Seeds are fixed, so the figure is reproducible. Rerun from the repository root (about ten seconds)::

    python docs/figures/overview.py

It writes ``overview.png`` next to this script.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch  # noqa: E402

OUT = Path(__file__).resolve().with_name("overview.png")

SIM_SEED = 1  # Pythia seed of the simulated jets; the figure shows the first jet
MASK_SEED = 7  # seed of the target draw
TARGET_FRACTION = 0.3
MAX_SUBJETS = 20  # the S=20 hardest subjets are kept, as in the shards
JET_RADIUS = 0.8
SUBJET_RADIUS = 0.2

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2",
           "#bcbd22", "#7f7f7f"]
SOFT = "#c7c7c7"  # subjets beyond the palette
TARGET_FACE = "#bdbdbd"


def _eta_phi(px, py, pz):
    pt = np.hypot(px, py)
    return pt, np.arcsinh(pz / np.maximum(pt, 1e-12)), np.arctan2(py, px)


def _wrap(dphi):
    return (dphi + math.pi) % (2 * math.pi) - math.pi


@contextlib.contextmanager
def _quiet_stdout():
    """Send file descriptor 1 to /dev/null for a while (output written by C++ libraries included)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def simulated_jet():
    """One top jet: constituents (pT, Δη, Δφ, subjet rank) and subjets (pT, Δη, Δφ), pT-ordered."""
    from jjepa.preprocess.cluster import cluster
    from jjepa.preprocess.simulate import SimConfig, simulate_jets

    with _quiet_stdout():  # FastJet prints its banner from C++
        chunk = simulate_jets(SimConfig(process="top", n_jets=2, seed=SIM_SEED), workers=1, progress=False)
    lo, hi = int(chunk.offsets[0]), int(chunk.offsets[1])
    px, py, pz, e = (np.asarray(a[lo:hi], np.float64) for a in (chunk.px, chunk.py, chunk.pz, chunk.energy))
    assign, n_subjets = cluster(px, py, pz, e, np.array([0, hi - lo]), algorithm="ca", radius=SUBJET_RADIUS)
    n_sub = int(n_subjets[0])

    _, jet_eta, jet_phi = _eta_phi(px.sum(), py.sum(), pz.sum())
    pt, eta, phi = _eta_phi(px, py, pz)
    sub_p = np.stack([np.bincount(assign, weights=a, minlength=n_sub) for a in (px, py, pz)])
    sub_pt, sub_eta, sub_phi = _eta_phi(*sub_p)
    order = np.argsort(-sub_pt, kind="stable")[:MAX_SUBJETS]
    rank = np.full(n_sub, len(order), dtype=np.int64)  # subjets beyond S: not tokens
    rank[order] = np.arange(len(order))
    constituents = (pt, eta - jet_eta, _wrap(phi - jet_phi), rank[assign])
    subjets = (sub_pt[order], sub_eta[order] - jet_eta, _wrap(sub_phi[order] - jet_phi))
    return constituents, subjets


def draw_targets(n_subjets: int) -> np.ndarray:
    """Target mask over the pT-ordered subjets, drawn as the trainer draws it."""
    import torch
    from jjepa.train.mechanics.masking import mask_generator, sample_targets

    real = torch.ones(1, n_subjets, dtype=torch.bool)
    return sample_targets(real, TARGET_FRACTION, mask_generator(MASK_SEED, 0, 0))[0].numpy()


def _colour(rank: int) -> str:
    return PALETTE[rank] if rank < len(PALETTE) else SOFT


def _title(ax, title: str, subtitle: str) -> None:
    """Bold title over a two-line grey subtitle, above the axes."""
    ax.annotate(subtitle, (0, 1), xycoords="axes fraction", xytext=(0, 5), textcoords="offset points",
                fontsize=10.5, color="0.3", va="bottom", ha="left", linespacing=1.2)
    ax.annotate(title, (0, 1), xycoords="axes fraction", xytext=(0, 36), textcoords="offset points",
                fontsize=14, fontweight="bold", va="bottom", ha="left")


def _jet_axes(ax, title: str, subtitle: str) -> None:
    lim = JET_RADIUS + 0.08
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.add_patch(Circle((0, 0), JET_RADIUS, fill=False, ls="--", lw=1.0, color="0.55"))
    ax.plot(0, 0, marker="+", ms=10, mew=1.5, color="k", zorder=5)
    ax.set_xlabel(r"$\Delta\eta$")
    ax.set_ylabel(r"$\Delta\phi$", labelpad=0)
    ax.set_xticks([-0.8, -0.4, 0, 0.4, 0.8])
    ax.set_yticks([-0.8, -0.4, 0, 0.4, 0.8])
    _title(ax, title, subtitle)


def panel_jet(ax, constituents, n_tokens: int) -> None:
    pt, deta, dphi, rank = constituents
    colours = [_colour(r) if r < n_tokens else SOFT for r in rank]
    order = np.argsort(-pt)  # soft particles on top of hard ones
    ax.scatter(deta[order], dphi[order], s=4 + 1200 * pt[order] / pt.max(), c=[colours[i] for i in order],
               alpha=0.8, edgecolors="k", linewidths=0.3, zorder=3)
    _jet_axes(ax, "1  a jet → subjets", f"{len(pt)} particles → {n_tokens} CA R={SUBJET_RADIUS} subjets\n"
              "area ∝ $p_T$, colour = subjet")


def panel_tokens(ax, subjets, targets) -> None:
    sub_pt, deta, dphi = subjets
    radius = 0.23 * np.sqrt(sub_pt / sub_pt.max())
    for k in np.argsort(-sub_pt):
        r = max(radius[k], 0.018)
        if targets[k]:
            ax.add_patch(Circle((deta[k], dphi[k]), r, facecolor=TARGET_FACE, edgecolor="0.3", hatch="///",
                                lw=1.0, zorder=3))
        else:
            ax.add_patch(Circle((deta[k], dphi[k]), r, facecolor=_colour(k), edgecolor="k", lw=0.6,
                                alpha=0.85, zorder=4))
    _jet_axes(ax, "2  context and targets", "subjets = tokens, area ∝ subjet $p_T$\n"
              f"{TARGET_FRACTION:.0%} are targets, to be predicted")
    handles = [Patch(facecolor=PALETTE[0], edgecolor="k", lw=0.6, label=f"context ({(~targets).sum()})"),
               Patch(facecolor=TARGET_FACE, edgecolor="0.3", hatch="///", label=f"target ({targets.sum()})")]
    ax.legend(handles=handles, loc="lower left", fontsize=10, framealpha=0.95, edgecolor="0.8",
              handlelength=1.4, borderaxespad=0.3)


def _box(ax, x, y, text, w=0.16, h=0.2, face="#eef3fb", edge="#3b6bb0", **kw):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.005,rounding_size=0.02",
                                facecolor=face, edgecolor=edge, lw=1.4, clip_on=False, **kw))
    ax.text(x, y, text, ha="center", va="center", fontsize=11.5, linespacing=1.15)
    return (x - w / 2, x + w / 2, y - h / 2, y + h / 2)


def _arrow(ax, start, end, style="-|>", colour="0.15", **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color=colour, lw=1.4,
                                 shrinkA=0, shrinkB=0, **kw))


def panel_schematic(ax) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    _title(ax, "3  J-JEPA pretraining", "predict the targets' representations from the context\n"
           "(in representation space, not particle space)")
    top, bottom = 0.66, 0.22
    xs = [0.09, 0.295, 0.5, 0.705, 0.91]
    w = 0.16
    grey = dict(face="#f2f2f2", edge="0.45")
    green = dict(face="#edf7ed", edge="#3a8a3a")
    b_ctx = _box(ax, xs[0], top, "context\nsubjets", w=w, **grey)
    b_emb = _box(ax, xs[1], top, "subjet\nembedding", w=w)
    b_enc = _box(ax, xs[2], top, "context\nencoder\n(transformer)", w=0.18, h=0.24)
    b_pred = _box(ax, xs[3], top, "predictor", w=w)
    b_out = _box(ax, xs[4], top, "predicted\ntarget reps", w=w, **green)
    b_pos = _box(ax, xs[3], 0.93, r"target positions $\Delta\eta$, $\sin(\Delta\phi/2)$", w=0.42, h=0.08,
                 face="white", edge="0.45")
    b_all = _box(ax, xs[0], bottom, "all\nsubjets", w=w, **grey)
    b_tgt = _box(ax, xs[2], bottom, "target encoder\nEMA of embedding + encoder\n(no gradient)",
                 w=0.42, h=0.26,
                 face="#fdf1e6", edge="#c46d1c")
    b_rep = _box(ax, xs[4], bottom, "target reps", w=w, **green)
    for a, b in ((b_ctx, b_emb), (b_emb, b_enc), (b_enc, b_pred), (b_pred, b_out)):
        _arrow(ax, (a[1], top), (b[0], top))
    _arrow(ax, (b_all[1], bottom), (b_tgt[0], bottom))
    _arrow(ax, (b_tgt[1], bottom), (b_rep[0], bottom))
    _arrow(ax, (xs[3], b_pos[2]), (xs[3], b_pred[3]))
    # EMA: the target encoder's weights follow the context encoder's (no gradient flows back)
    _arrow(ax, (xs[2], b_enc[2]), (xs[2], b_tgt[3]), style="-|>", colour="#c46d1c", ls=(0, (4, 3)))
    ax.text(xs[2] + 0.012, 0.5 * (b_enc[2] + b_tgt[3]), "EMA\nweights", fontsize=10, color="#c46d1c",
            va="center", ha="left")
    # L2 loss between predicted and actual target representations
    loss_y = 0.5 * (top + bottom)
    b_loss = _box(ax, xs[4], loss_y, "L2 loss", w=0.13, h=0.1, face="#fde8e8", edge="#b22222")
    _arrow(ax, (xs[4], b_out[2]), (xs[4], b_loss[3]))
    _arrow(ax, (xs[4], b_rep[3]), (xs[4], b_loss[2]))
    ax.text(0.5, 0.005, "after pretraining: finetune the (EMA) target encoder for tagging",
            transform=ax.transAxes, ha="center", va="bottom", fontsize=10.5, color="0.3", style="italic")


def main() -> None:
    plt.rcParams.update({"font.size": 11, "axes.labelsize": 12, "xtick.labelsize": 10, "ytick.labelsize": 10,
                         "hatch.linewidth": 0.8, "hatch.color": "0.3"})
    constituents, subjets = simulated_jet()
    targets = draw_targets(len(subjets[0]))

    fig = plt.figure(figsize=(15, 4.5))
    grid = fig.add_gridspec(1, 3, width_ratios=[1, 1, 2.05], wspace=0.2, left=0.045, right=0.99, bottom=0.11,
                            top=0.83)
    ax_jet, ax_tokens, ax_scheme = (fig.add_subplot(grid[k]) for k in range(3))
    panel_jet(ax_jet, constituents, len(subjets[0]))
    panel_tokens(ax_tokens, subjets, targets)
    panel_schematic(ax_scheme)
    # the jet panels are square: give the schematic their height so the titles line up
    ax_jet.apply_aspect()
    square, scheme = ax_jet.get_position(), ax_scheme.get_position()
    ax_scheme.set_position([scheme.x0, square.y0, scheme.width, square.height])
    fig.savefig(OUT, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
