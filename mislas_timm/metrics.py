"""Accuracy splits and calibration metrics (ECE, MCE, NLL, Brier), vectorised in torch.

All rates are fractions in [0, 1]. Inputs are probabilities (rows summing to 1), checked.

- ECE (Guo et al. 2017) with B equal-width bins (lo, hi] over the confidence c = max_k p_k:
  ECE = sum_b |b| / n * |acc(b) - conf(b)|;  MCE = max_b |acc(b) - conf(b)| over non-empty bins.
- NLL = mean -log p_y;  Brier = mean_n sum_k (p_nk - 1[k = y_n])^2.
- Class groups by training count N: many (> 100), medium (20..100), few (< 20); and by frequency
  rank (head / med / tail) with the preset's split [a, b): ranks [0, a), [a, b), [b, K).
  A group without classes is ``None``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

__all__ = ['check_probs', 'ece', 'reliability_bins', 'calibration_report', 'REPORT_KEYS']

REPORT_KEYS = (
    'top1', 'top5', 'ece', 'mce', 'nll', 'brier', 'many_top1', 'medium_top1', 'few_top1',
    'head_top1', 'med_top1', 'tail_top1', 'per_class_top1', 'class_counts', 'num_samples',
    'split', 'dataset', 'wall_time_s', 'images_per_s', 'reliability',
)


def check_probs(probs: torch.Tensor, labels: torch.Tensor, atol: float = 1e-3) -> None:
    """Refuse anything but an (n, K) probability matrix and n labels in [0, K)."""
    if not isinstance(probs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError('probs and labels must be torch tensors')
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f'probs must have shape (num_samples, num_classes >= 2), got {tuple(probs.shape)}')
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f'labels must have shape ({probs.shape[0]},) to match probs, got {tuple(labels.shape)}')
    if labels.dtype.is_floating_point:
        raise ValueError('labels must be integer class indices, not floats')
    if int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]:
        raise ValueError(f'labels must lie in [0, {probs.shape[1] - 1}], found {int(labels.min())}..{int(labels.max())}')
    # float32 sums and a min() reduction: no full-size temporaries (ImageNet / iNaturalist-sized inputs).
    row_sums = probs.sum(dim=1)
    if not bool(torch.isfinite(row_sums).all()) or float(probs.min()) < 0 or \
            float((row_sums.double() - 1).abs().max()) > atol:
        raise ValueError('probs must be probabilities (non-negative rows summing to 1); '
                         'for logits pass logits.softmax(dim=1)')


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> Dict[str, List]:
    """Per-bin counts, accuracies and mean confidences over (lo, hi] bins of max-softmax confidence."""
    check_probs(probs, labels)
    conf, pred = probs.max(dim=1)
    return _bins(conf, pred == labels, n_bins)


def _bins(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> Dict[str, List]:
    if n_bins < 1:
        raise ValueError(f'n_bins must be >= 1, got {n_bins}')
    conf = conf.double()
    correct = correct.double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    # bucketize(right=False) gives b with edges[b] < c <= edges[b + 1]: the (lo, hi] convention.
    idx = torch.bucketize(conf, edges[1:-1], right=False)
    counts = torch.bincount(idx, minlength=n_bins).double()
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    safe = counts.clamp(min=1)
    return {
        'edges': edges.tolist(),
        'counts': [int(c) for c in counts.tolist()],
        'accuracies': [float(a) if n else None for a, n in zip((acc_sum / safe).tolist(), counts.tolist())],
        'confidences': [float(c) if n else None for c, n in zip((conf_sum / safe).tolist(), counts.tolist())],
    }


def _calibration_gaps(bins: Dict[str, List]) -> torch.Tensor:
    counts = torch.tensor(bins['counts'], dtype=torch.float64)
    acc = torch.tensor([a if a is not None else 0.0 for a in bins['accuracies']], dtype=torch.float64)
    conf = torch.tensor([c if c is not None else 0.0 for c in bins['confidences']], dtype=torch.float64)
    return counts, (acc - conf).abs()


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error (a fraction): sum_b |b| / n * |acc(b) - conf(b)|, bins (lo, hi]."""
    counts, gaps = _calibration_gaps(reliability_bins(probs, labels, n_bins))
    return float((counts / counts.sum() * gaps).sum())


def _group_top1(correct_per_class: torch.Tensor, total_per_class: torch.Tensor, mask: torch.Tensor) -> Optional[float]:
    if not bool(mask.any()) or float(total_per_class[mask].sum()) == 0:
        return None
    return float(correct_per_class[mask].sum() / total_per_class[mask].sum())


def calibration_report(
        probs: torch.Tensor,
        labels: torch.Tensor,
        class_counts: Optional[Sequence[int]] = None,
        rank_split: Optional[Sequence[int]] = None,
        n_bins: int = 15,
) -> Dict:
    """Top-1/top-5, ECE, MCE, NLL, Brier, per-class and grouped accuracy, reliability bins.

    ``class_counts``: training samples per class (for the many/medium/few and head/med/tail
    groups; ``None`` leaves the group keys ``None``). ``rank_split``: [a, b] frequency-rank cut points.
    """
    check_probs(probs, labels)
    probs = probs.float()
    num_classes = probs.shape[1]
    n = probs.shape[0]
    topk = probs.topk(min(5, num_classes), dim=1)
    correct_k = (topk.indices == labels[:, None])
    correct = correct_k[:, 0].double()
    p_true = probs.gather(1, labels[:, None]).squeeze(1).double()
    nll = float(-(p_true.clamp(min=1e-12)).log().mean())
    # sum_k p_k^2 as a batched dot product: no (n, K) temporary.
    sum_sq = (probs.unsqueeze(1) @ probs.unsqueeze(2)).reshape(n).double()
    brier = float((sum_sq - 2 * p_true + 1).mean())
    bins = _bins(topk.values[:, 0], correct, n_bins)
    counts_t, gaps = _calibration_gaps(bins)
    nonempty = counts_t > 0
    total_per_class = torch.bincount(labels, minlength=num_classes).double()
    correct_per_class = torch.bincount(labels, weights=correct, minlength=num_classes)
    per_class = [float(c / t) if t else None for c, t in zip(correct_per_class.tolist(), total_per_class.tolist())]
    report = {
        'top1': float(correct.mean()),
        'top5': float(correct_k.any(dim=1).double().mean()),
        'ece': float((counts_t / n * gaps).sum()),
        'mce': float(gaps[nonempty].max()),
        'nll': nll,
        'brier': brier,
        'many_top1': None, 'medium_top1': None, 'few_top1': None,
        'head_top1': None, 'med_top1': None, 'tail_top1': None,
        'per_class_top1': per_class,
        'class_counts': None,
        'num_samples': int(n),
        'reliability': bins,
    }
    if class_counts is not None:
        counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        if counts.numel() != num_classes:
            raise ValueError(f'class_counts has {counts.numel()} entries but probs has {num_classes} classes')
        report['class_counts'] = [int(c) for c in counts.tolist()]
        report['many_top1'] = _group_top1(correct_per_class, total_per_class, counts > 100)
        report['medium_top1'] = _group_top1(correct_per_class, total_per_class, (counts >= 20) & (counts <= 100))
        report['few_top1'] = _group_top1(correct_per_class, total_per_class, counts < 20)
        if rank_split is not None:
            a, b = (int(v) for v in rank_split)
            if not 0 <= a <= b <= num_classes:
                raise ValueError(f'rank_split must be [a, b] with 0 <= a <= b <= {num_classes}, got {list(rank_split)}')
            # Stable sort: ties keep class order, as the reference's class-index split on sorted CIFAR-LT.
            order = torch.sort(-counts, stable=True).indices
            rank = torch.empty(num_classes, dtype=torch.long)
            rank[order] = torch.arange(num_classes)
            report['head_top1'] = _group_top1(correct_per_class, total_per_class, rank < a)
            report['med_top1'] = _group_top1(correct_per_class, total_per_class, (rank >= a) & (rank < b))
            report['tail_top1'] = _group_top1(correct_per_class, total_per_class, rank >= b)
    return report


def class_groups(class_counts: Sequence[int], rank_split: Sequence[int]) -> List[str]:
    """'head' / 'medium' / 'tail' for each class by frequency rank (the demo's marks)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    order = torch.sort(-counts, stable=True).indices
    a, b = (int(v) for v in rank_split)
    groups = [''] * len(counts)
    for rank, cls in enumerate(order.tolist()):
        groups[cls] = 'head' if rank < a else ('medium' if rank < b else 'tail')
    return groups
