"""Reliability diagrams (accuracy per confidence bin against the diagonal), as the paper's figures.

Each diagram has two panels sharing the confidence axis, as in Guo et al. 2017 (Fig. 1): above,
accuracy per bin with the gap to the bin's mean confidence; below, the confidence histogram (the
fraction of samples per bin), with the average confidence and the accuracy as vertical lines.
The input is the ``reliability`` dict of a report (``metrics.reliability_bins``): bin ``edges``,
per-bin ``counts``, ``accuracies`` and ``confidences`` (``None`` for an empty bin).

Figures are built with matplotlib's object API (no pyplot, no global backend switch), so this is
safe to call from servers and threads.
"""
from __future__ import annotations

import io
import textwrap
from typing import Dict, Optional

__all__ = ['reliability_diagram', 'reliability_diagram_png']

FIGSIZE = (4.0, 5.0)  # inches; at DPI, the PNG is 400 x 500 pixels
DPI = 100


def _summary(bins: Dict):
    """(counts, accuracies, confidences with 0 for empty bins, n, ECE, accuracy, mean confidence) from bins."""
    counts = [int(c) for c in bins['counts']]
    accs = [a if a is not None else 0.0 for a in bins['accuracies']]
    confs = [c if c is not None else 0.0 for c in bins['confidences']]
    n = sum(counts)
    if n == 0:
        return counts, accs, confs, 0, 0.0, 0.0, 0.0
    ece = sum(k / n * abs(a - c) for k, a, c in zip(counts, accs, confs))
    accuracy = sum(k * a for k, a in zip(counts, accs)) / n
    confidence = sum(k * c for k, c in zip(counts, confs)) / n
    return counts, accs, confs, n, ece, accuracy, confidence


def reliability_diagram(bins: Dict, ece: Optional[float] = None, top1: Optional[float] = None,
                        title: Optional[str] = None):
    """A matplotlib ``Figure``: the reliability diagram above, the confidence histogram below.

    ``bins``: a report's ``reliability`` dict. ``ece`` and ``top1`` (fractions) are printed on
    the diagram; left out, they are computed from the bins. Axes: ``fig.axes[0]`` the diagram,
    ``fig.axes[1]`` the histogram, whose bar heights are ``counts / n``.
    """
    from matplotlib.figure import Figure

    counts, accs, confs, n, bin_ece, accuracy, confidence = _summary(bins)
    ece = bin_ece if ece is None else ece
    top1 = accuracy if top1 is None else top1
    edges = bins['edges']
    lefts = edges[:-1]
    widths = [hi - lo for lo, hi in zip(edges[:-1], edges[1:])]

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout='constrained')
    fig.get_layout_engine().set(h_pad=0.02, hspace=0.0)
    ax, hist = fig.subplots(2, 1, sharex=True, gridspec_kw={'height_ratios': [3, 1.1]})

    ax.bar(lefts, accs, width=widths, align='edge', color='#3b6fb6', edgecolor='black', linewidth=0.5,
           label='Accuracy')
    gaps_bottom = [min(a, c) for a, c in zip(accs, confs)]
    gaps_height = [abs(c - a) if k else 0.0 for a, c, k in zip(accs, confs, counts)]
    ax.bar(lefts, gaps_height, bottom=gaps_bottom, width=widths, align='edge', color='#e8a0a0', alpha=0.7,
           edgecolor='#c03030', hatch='//', linewidth=0.5, label='Gap')
    ax.plot([0, 1], [0, 1], linestyle='--', color='gray')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel('Accuracy')
    ax.tick_params(labelbottom=False)
    if title:
        ax.set_title(textwrap.fill(title, 48), fontsize=8)
    ax.text(0.03, 0.92, f'ECE = {100 * ece:.2f}%\nTop-1 = {100 * top1:.1f}%', transform=ax.transAxes,
            fontsize=9, va='top', bbox=dict(boxstyle='round', facecolor='white', alpha=0.8))
    ax.legend(loc='lower right', fontsize=8)

    fractions = [k / n if n else 0.0 for k in counts]
    hist.bar(lefts, fractions, width=widths, align='edge', color='#7f9cc8', edgecolor='black', linewidth=0.5)
    if n:
        hist.axvline(confidence, color='#c03030', linestyle='--', linewidth=1.2, label='Avg. confidence')
        hist.axvline(accuracy, color='black', linestyle='-', linewidth=1.2, label='Accuracy')
        hist.legend(loc='upper left', ncol=2, fontsize=7, frameon=True, framealpha=0.8, handlelength=1.5,
                    columnspacing=1.0, borderpad=0.3)
    hist.set_ylim(0, max(fractions + [0.0]) * 1.45 or 1.0)  # headroom for the one-row legend
    hist.set_xlim(0, 1)
    hist.set_xlabel('Confidence')
    hist.set_ylabel('Fraction of\nsamples', fontsize=9)
    hist.tick_params(axis='y', labelsize=8)
    fig.align_ylabels([ax, hist])
    return fig


def reliability_diagram_png(bins: Dict, ece: float, top1: float, title: Optional[str] = None) -> bytes:
    """PNG bytes (400 x 500 pixels) of ``reliability_diagram(bins, ece, top1, title)``.

    Above: blue bars, accuracy per bin; red hatched bars, the gap to the bin's mean confidence.
    Below: the fraction of samples per bin, with the average confidence and the accuracy.
    """
    fig = reliability_diagram(bins, ece, top1, title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=DPI)
    return buf.getvalue()
