"""Reliability diagrams (accuracy per confidence bin against the diagonal), as the paper's figures."""
from __future__ import annotations

import io
import textwrap
from typing import Dict, Optional

__all__ = ['reliability_diagram_png']


def reliability_diagram_png(bins: Dict, ece: float, top1: float, title: Optional[str] = None) -> bytes:
    """PNG bytes of a reliability diagram from ``metrics.reliability_bins`` output.

    Blue bars: accuracy per bin; red hatched bars: the gap to the bin's mean confidence.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    edges = bins['edges']
    width = edges[1] - edges[0]
    lefts = edges[:-1]
    accs = [a if a is not None else 0.0 for a in bins['accuracies']]
    confs = [c if c is not None else 0.0 for c in bins['confidences']]
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.bar(lefts, accs, width=width, align='edge', color='#3b6fb6', edgecolor='black', linewidth=0.5, label='Accuracy')
    gaps_bottom = [min(a, c) for a, c in zip(accs, confs)]
    gaps_height = [abs(c - a) if n else 0.0 for a, c, n in zip(accs, confs, bins['counts'])]
    ax.bar(lefts, gaps_height, bottom=gaps_bottom, width=width, align='edge', color='#e8a0a0', alpha=0.7,
           edgecolor='#c03030', hatch='//', linewidth=0.5, label='Gap')
    ax.plot([0, 1], [0, 1], linestyle='--', color='gray')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('Confidence')
    ax.set_ylabel('Accuracy')
    if title:
        ax.set_title(textwrap.fill(title, 48), fontsize=8)
    ax.text(0.03, 0.92, f'ECE = {100 * ece:.2f}%\nTop-1 = {100 * top1:.1f}%', transform=ax.transAxes,
            fontsize=9, va='top', bbox=dict(boxstyle='round', facecolor='white', alpha=0.8))
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    plt.close(fig)
    return buf.getvalue()
