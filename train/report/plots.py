"""Every figure jjepa draws: ROC curves and rejection vs labelled jets, in mplhep's CMS style.

The style is scoped with ``matplotlib.rc_context`` (never set globally) and figures are drawn on the Agg
canvas directly, so importing or calling this module never switches a user's backend. PNGs are written
atomically.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from jjepa.common.atomic import atomic_path
from jjepa.train.report.metrics import binary_metrics, roc_table

#: The mplhep style used for every figure.
_STYLE = "CMS"
_FALLBACK_FONT = "DejaVu Sans"


@contextlib.contextmanager
def hep_style() -> Iterator[None]:
    """A scope in which matplotlib uses mplhep's CMS style; the global rcParams are left untouched.

    Falls back to matplotlib's defaults without a word when mplhep is not installed, and to
    DejaVu Sans (matplotlib's own font) when the style's fonts are missing.
    """
    import matplotlib

    with matplotlib.rc_context(_style_params()):
        yield


def styled_axes(figsize: tuple[float, float] | None = None):
    """A new ``(Figure, Axes)`` in the HEP style on an Agg canvas (no pyplot, no backend switch).

    Axis labels and the title keep the style's fonts; lines and legends added later outside
    :func:`hep_style` take the global rcParams. Save with :func:`save_figure`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with hep_style():
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    return fig, ax


def save_figure(fig, path: str | Path, dpi: int = 150) -> None:
    """Render ``fig`` (a matplotlib Figure) to a PNG at ``path`` atomically, in the HEP style."""
    with hep_style(), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
             title: str | None = None) -> None:
    """Background rejection (log scale) vs signal efficiency of several taggers, as a PNG at ``path``.

    Args:
        curves: legend name -> ``(labels, scores)``: (J,) int in {0, 1} and (J,) float signal score
            of one tagger (J may differ between taggers). The legend shows each AUC and 1/εB at εS = 0.5.
        path: the PNG, written atomically.
        title: an optional title.
    """
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    with hep_style():
        fig, ax = styled_axes()
        for name, (labels, scores) in curves.items():
            figures = binary_metrics(labels, scores)
            table = roc_table(labels, scores)
            rejection = figures["rej_at_50"]
            shown = f"{rejection:.1f}" if math.isfinite(rejection) else "∞"
            ax.plot(table["signal_efficiency"], table["background_rejection"],
                    label=f"{name}: AUC {figures['auc']:.4f}, {shown}")
        efficiency = np.linspace(0.01, 1.0, 200)
        ax.plot(efficiency, 1.0 / efficiency, linestyle="--", color="grey", label="random")
        ax.set_yscale("log")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(bottom=0.9)  # rejection is at least 1
        ax.set_xlabel(r"signal efficiency $\varepsilon_S$")
        ax.set_ylabel(r"background rejection $1/\varepsilon_B$")
        if title:
            ax.set_title(title)
        ax.legend(title=r"AUC, $1/\varepsilon_B$ at $\varepsilon_S = 0.5$", loc="upper right")
        save_figure(fig, path)


def plot_rejection_vs_labels(summary: list[dict], path: str | Path) -> None:
    """Rejection at εS = 0.5 vs labelled training jets (log x), one curve per mode.

    The points are the seed averages (geometric), the error bars the 68 % test-set intervals and, with
    several seeds, the band the seed spread (see :mod:`jjepa.train.report.summary`). Lower bounds
    (no background jet passing) are drawn as upward triangles.
    """
    with hep_style():
        fig, ax = styled_axes()
        _draw_curves(ax, summary)
        save_figure(fig, path)


def _draw_curves(ax, summary: list[dict]) -> None:
    for mode in dict.fromkeys(e["mode"] for e in summary):
        entries = sorted((e for e in summary if e["mode"] == mode), key=lambda e: e["n_train_labels"])
        x = np.array([e["n_train_labels"] for e in entries], dtype=float)
        central = np.array([e["rej_at_50_mean"] for e in entries])
        low = np.array([e["rej_at_50_ci_low"] for e in entries])
        high = np.array([e["rej_at_50_ci_high"] for e in entries])
        bound = np.array([bool(e.get("rej_at_50_lower_bound")) for e in entries])
        errors = np.nan_to_num(np.abs(np.vstack([central - low, np.minimum(high, 10 * central) - central])))
        (line,) = ax.plot(x, central, label=mode)
        ax.errorbar(x[~bound], central[~bound], yerr=errors[:, ~bound], fmt="o", color=line.get_color(),
                    capsize=3)
        if bound.any():
            ax.plot(x[bound], central[bound], "^", color=line.get_color())
        spreads = [e["rej_at_50_seed_spread"] for e in entries]
        if all(s is not None for s in spreads):
            factor = np.exp(np.array(spreads, dtype=float))
            ax.fill_between(x, central / factor, central * factor, alpha=0.2, color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("labelled training jets")
    ax.set_ylabel(r"background rejection $1/\varepsilon_B$ at $\varepsilon_S = 0.5$")
    ax.legend(title="bars: test set 68 %; band: seeds")


def _style_params() -> dict:
    """mplhep's style as rcParams, with fonts that exist here (a fresh copy of the cached style)."""
    return dict(_load_style())


@functools.lru_cache(maxsize=1)
def _load_style() -> dict:
    try:
        import mplhep
    except ImportError:
        return {}
    from matplotlib import font_manager, rcParams

    style = getattr(mplhep.style, _STYLE)
    if isinstance(style, Sequence):  # a style may be a list of dicts applied in order
        merged: dict = {}
        for part in style:
            merged.update(part)
        style = merged
    params = {key: value for key, value in dict(style).items() if key in rcParams}

    def available(family: str) -> bool:
        try:
            font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
        except ValueError:
            return False
        return True

    wanted = params.get("font.sans-serif", [])
    fonts = [family for family in ([wanted] if isinstance(wanted, str) else list(wanted)) if available(family)]
    if params.get("mathtext.fontset") == "custom" and not (fonts and fonts[0] in str(params.get("mathtext.rm"))):
        params = {key: value for key, value in params.items() if not key.startswith("mathtext.")}
        params["mathtext.fontset"] = "dejavusans"
    params["font.sans-serif"] = [*fonts, _FALLBACK_FONT]
    return params
