"""The reliability diagram of a calibration: predicted vs observed rate per bin, before and after, and the scores."""

from __future__ import annotations

import os

import numpy as np

from .fit import ECE_BINS, FitResult, reliability_bins


def reliability_diagram(result: FitResult, path: str | os.PathLike) -> None:
    """Draw ``result``'s held-out reliability (equal-mass bins) before and after calibration, over a
    histogram of both, into a PNG at ``path``. Needs matplotlib (drawn with its Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"the reliability diagram needs matplotlib ({e}); install it with: "
                          "pip install 'genrank[calibrate]'") from e
    cal, y = result.calibration, result.held_out_labels
    curves = (("relevance (uncalibrated)", result.held_out_relevance, cal.metrics["before"], "tab:gray", "s"),
              (f"probability ({cal.method})", result.held_out_probability, cal.metrics["after"], "tab:blue", "o"))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 7.5), height_ratios=(3, 1.2), sharex=True,
                                      layout="constrained")
    top.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfectly calibrated")
    for label, p, metrics, color, marker in curves:
        predicted, observed, _ = reliability_bins(p, y, ECE_BINS)
        top.plot(predicted, observed, marker=marker, color=color,
                 label=f"{label}: ECE {metrics['ece']:.3f}, Brier {metrics['brier']:.3f}")
    top.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), ylabel="observed rate of relevant pairs",
            title=f"Held-out reliability: {len(y)} pairs, {int(y.sum())} relevant\n"
                  f"(points: {ECE_BINS} equal-mass bins)")
    top.legend(loc="lower right", fontsize="small")
    top.grid(alpha=0.3)
    bins = np.linspace(0, 1, 41)
    for label, p, _, color, _ in curves:
        bottom.hist(p, bins=bins, color=color, alpha=0.5, label=label)
    bottom.set(xlabel="predicted value (relevance before, probability after)", ylabel="pairs")
    bottom.legend(loc="upper center", fontsize="small")
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["reliability_diagram"]
