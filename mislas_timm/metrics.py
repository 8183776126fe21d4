"""Accuracy splits and calibration metrics (ECE, MCE, NLL, Brier), vectorised in torch.

All rates are fractions in [0, 1]. Inputs are probabilities (rows summing to 1), checked; torch
tensors (detached first, so tensors that require grad are fine) or numpy arrays.

- ECE (Guo et al. 2017) with B equal-width bins (lo, hi] over the confidence c = max_k p_k
  (c = 0 goes to the first bin): ECE = sum_b |b| / n * |acc(b) - conf(b)|;
  MCE = max_b |acc(b) - conf(b)| over non-empty bins.
- Adaptive ECE: the same sum over B bins of (nearly) equal count (the stably sorted confidences
  split as ``numpy.array_split``); classwise ECE (Kull et al. 2019): per class k, ECE of p_k against
  1[y = k] over B equal-width bins (lo, hi] of p_k over all samples, averaged over classes.
- NLL = mean -log p_y;  Brier = mean_n sum_k (p_nk - 1[k = y_n])^2.
- Class groups by training count N: many (> 100), medium (20..100), few (< 20); and by frequency
  rank (head / med / tail) with the preset's split [a, b): ranks [0, a), [a, b), [b, K).
  A group without classes is ``None``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ['check_probs', 'ece', 'adaptive_ece', 'classwise_ece', 'reliability_bins', 'confidence_bin_index',
           'calibration_report', 'REPORT_KEYS', 'summarize_seed_runs', 'SEED_RUN_KEYS']

REPORT_KEYS = (
    'top1', 'top5', 'ece', 'mce', 'nll', 'brier', 'many_top1', 'medium_top1', 'few_top1',
    'head_top1', 'med_top1', 'tail_top1', 'per_class_top1', 'class_counts', 'num_samples',
    'split', 'dataset', 'wall_time_s', 'images_per_s', 'reliability', 'adaptive_ece', 'classwise_ece',
)

ArrayLike = Union[torch.Tensor, np.ndarray]


def _as_tensors(probs: ArrayLike, labels: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Detached torch tensors from tensors or numpy arrays (integer labels as int64)."""
    out = []
    for name, x in (('probs', probs), ('labels', labels)):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif isinstance(x, torch.Tensor):
            x = x.detach()  # no autograd graph, and no warning when converting to Python scalars
        else:
            raise TypeError(f'{name} must be a torch tensor or a numpy array, got {type(x).__name__}')
        out.append(x)
    probs, labels = out
    if not labels.dtype.is_floating_point and labels.dtype not in (torch.int64, torch.bool):
        labels = labels.long()
    return probs, labels


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f'n_bins must be an integer >= 1, got {n_bins!r}')
    return int(n_bins)


def probability_sum_tolerance(dtype: torch.dtype, atol: float = 1e-3) -> float:
    """How far from 1 a row of probabilities stored in ``dtype`` may sum: ``atol``, or the dtype's
    machine epsilon where that is larger. Each entry is rounded by at most eps / 2 of its value and
    a row sums to 1, so a bf16 softmax row (eps 2 ** -7) can sum to 1 +- 0.0039."""
    return max(atol, float(torch.finfo(dtype).eps)) if dtype.is_floating_point else atol


def check_probs(probs: ArrayLike, labels: ArrayLike, atol: float = 1e-3) -> None:
    """Refuse anything but an (n, K) probability matrix and n labels in [0, K)."""
    probs, labels = _as_tensors(probs, labels)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f'probs must have shape (num_samples, num_classes >= 2), got {tuple(probs.shape)}')
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0]:
        raise ValueError(f'labels must have shape ({probs.shape[0]},) to match probs, got {tuple(labels.shape)}')
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f'labels must be integer class indices, got {labels.dtype}')
    if not probs.dtype.is_floating_point:
        raise ValueError(f'probs must be floating-point probabilities, got {probs.dtype}')
    if int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]:
        raise ValueError(f'labels must lie in [0, {probs.shape[1] - 1}], found {int(labels.min())}..{int(labels.max())}')
    # Row sums accumulated in float64 (a bf16 accumulator alone is off by ~0.4%) and a min() reduction.
    atol = probability_sum_tolerance(probs.dtype, atol)
    row_sums = probs.sum(dim=1, dtype=torch.float64)
    finite = bool(torch.isfinite(row_sums).all())
    low = float(probs.min()) if finite else float('nan')
    dev = (row_sums - 1).abs()
    if not finite or low < 0 or float(dev.max()) > atol:
        if not finite:
            problem = 'found NaN or infinite values'
        else:
            row = int(dev.argmax())
            problem = f'row {row} sums to {float(row_sums[row]):.6g}' if float(dev.max()) > atol else ''
            if low < 0:
                problem += ('' if not problem else ' and ') + f'the smallest entry is {low:.6g}'
        raise ValueError(f'probs must be probabilities (non-negative rows summing to 1), but {problem}; '
                         'if these are logits, apply softmax first: probs = logits.softmax(dim=1)')


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> Dict[str, List]:
    """Per-bin counts, accuracies and mean confidences over (lo, hi] bins of max-softmax confidence."""
    probs, labels = _as_tensors(probs, labels)
    check_probs(probs, labels)
    conf, pred = probs.max(dim=1)
    return _bins(conf, pred == labels, n_bins)


def confidence_bin_index(conf: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """The equal-width bin of each confidence: b with b / n_bins < c <= (b + 1) / n_bins (bins (lo, hi])."""
    edges = torch.linspace(0, 1, _check_bins(n_bins) + 1, dtype=torch.float64)
    # bucketize(right=False) gives b with edges[b] < c <= edges[b + 1]: the (lo, hi] convention.
    return torch.bucketize(conf.double().contiguous(), edges[1:-1], right=False)


def _bins(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> Dict[str, List]:
    n_bins = _check_bins(n_bins)
    conf = conf.double().contiguous()
    correct = correct.double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = confidence_bin_index(conf, n_bins)
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


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error (a fraction): sum_b |b| / n * |acc(b) - conf(b)|, bins (lo, hi]."""
    counts, gaps = _calibration_gaps(reliability_bins(probs, labels, n_bins))
    return float((counts / counts.sum() * gaps).sum())


def adaptive_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Adaptive (equal-mass) expected calibration error, a fraction in [0, 1].

    The samples, sorted by their max-softmax confidence c = max_k p_k (a stable sort, so tied
    confidences keep their sample order), are split into ``n_bins`` bins of (nearly) equal count,
    exactly as ``numpy.array_split(order, n_bins)`` (the first n % n_bins bins hold one more sample);
    then ACE = sum_b |b| / n * |acc(b) - conf(b)|, with acc(b) the fraction of b whose argmax (the
    first maximum) is the label and conf(b) the mean confidence in b. Empty bins (n < n_bins)
    contribute nothing. ``probs``: (n, K) probabilities (rows summing to 1; for logits apply softmax
    first), ``labels``: n class indices; torch tensors or numpy arrays.
    """
    probs, labels = _as_tensors(probs, labels)
    check_probs(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, pred = probs.max(dim=1)
    return _adaptive_ece(conf, pred == labels, n_bins)


def _adaptive_ece(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    n = conf.shape[0]
    order = torch.sort(conf, stable=True).indices
    q, r = divmod(n, n_bins)
    sizes = torch.tensor([q + 1] * r + [q] * (n_bins - r), dtype=torch.long, device=conf.device)
    bin_of = torch.repeat_interleave(torch.arange(n_bins, device=conf.device), sizes)
    # |b| / n * |acc(b) - conf(b)| = |sum_b correct - sum_b conf| / n
    acc_sum = torch.bincount(bin_of, weights=correct[order].double(), minlength=n_bins)
    conf_sum = torch.bincount(bin_of, weights=conf[order].double(), minlength=n_bins)
    return float((acc_sum - conf_sum).abs().sum() / n)


def classwise_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Classwise expected calibration error (Kull et al. 2019), a fraction in [0, 1].

    For each class k: ``n_bins`` equal-width bins (lo, hi] over p_k of all n samples (as in
    ``ece``: a probability of exactly 0 goes to the first bin) and
    ECE_k = sum_b |b| / n * |mean_b(1[y = k]) - mean_b(p_k)|; the result is the mean of ECE_k over
    the K classes. ``probs``: (n, K) probabilities (rows summing to 1; for logits apply softmax
    first), ``labels``: n class indices; torch tensors or numpy arrays.
    """
    probs, labels = _as_tensors(probs, labels)
    check_probs(probs, labels)
    n_bins = _check_bins(n_bins)
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
    return _classwise_ece(probs, labels, n_bins, probs.topk(min(5, probs.shape[1]), dim=1))


def _column_sums(probs: torch.Tensor, budget: int = 1 << 20) -> torch.Tensor:
    """sum_i p_ik in float64, through row blocks of about ``budget`` entries (no full-size float64 copy)."""
    n, k = probs.shape
    rows = max(1, budget // k)
    total = torch.zeros(k, dtype=torch.float64, device=probs.device)
    buf = torch.empty(min(rows, n), k, dtype=torch.float64, device=probs.device)
    for start in range(0, n, rows):
        block = probs[start:start + rows]
        part = buf[:block.shape[0]]
        part.copy_(block)
        total += part.sum(dim=0)
    return total


def _classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int, top) -> float:
    """Classwise ECE without (n, K)-sized temporaries beyond a few row blocks.

    ``top``: ``probs.topk(m, dim=1)`` for some m >= 1. Only entries above the first bin edge 1/B
    need binning; a row holds few of them (they sum to at most ~1), and for a row whose m-th largest
    entry is <= 1/B they all lie in its top m. Rows with more are binned from the full row. The first
    bin's sum of p_k is the column sum minus the upper bins'.
    """
    n, num_classes = probs.shape
    dev = probs.device
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=dev)
    inner = edges[1:-1]
    # count of y = k per bin of p_k, from p_{i, y_i} alone
    p_true = probs.gather(1, labels[:, None]).squeeze(1).double()
    hits = torch.bincount(labels * n_bins + torch.bucketize(p_true, inner), minlength=num_classes * n_bins)
    p_sum = torch.zeros(num_classes * n_bins, dtype=torch.float64, device=dev)
    if n_bins > 1:
        values, indices = top.values.double(), top.indices
        cut = float(edges[1])
        upper = values > cut
        if values.shape[1] < num_classes:
            spill = (values[:, -1] > cut).nonzero().squeeze(1)
            upper[spill] = False
        else:
            spill = torch.zeros(0, dtype=torch.long, device=dev)
        cls, val = [indices[upper]], [values[upper]]
        step = max(1, (1 << 20) // num_classes)
        for start in range(0, spill.numel(), step):
            block = probs[spill[start:start + step]].double()
            r, c = (block > cut).nonzero(as_tuple=True)
            cls.append(c)
            val.append(block[r, c])
        cls, val = torch.cat(cls), torch.cat(val)
        p_sum += torch.bincount(cls * n_bins + torch.bucketize(val, inner), weights=val,
                                minlength=num_classes * n_bins)
    p_sum = p_sum.view(num_classes, n_bins)
    p_sum[:, 0] = _column_sums(probs) - p_sum[:, 1:].sum(dim=1)
    # |b| / n * |mean_b(1[y = k]) - mean_b(p_k)| = |sum_b 1[y = k] - sum_b p_k| / n
    per_class = (hits.view(num_classes, n_bins).double() - p_sum).abs().sum(dim=1) / n
    return float(per_class.mean())


def _group_top1(correct_per_class: torch.Tensor, total_per_class: torch.Tensor, mask: torch.Tensor) -> Optional[float]:
    if not bool(mask.any()) or float(total_per_class[mask].sum()) == 0:
        return None
    return float(correct_per_class[mask].sum() / total_per_class[mask].sum())


def calibration_report(
        probs: ArrayLike,
        labels: ArrayLike,
        class_counts: Optional[Sequence[int]] = None,
        rank_split: Optional[Sequence[int]] = None,
        n_bins: int = 15,
) -> Dict:
    """Top-1/top-5, ECE, MCE, adaptive and classwise ECE, NLL, Brier, per-class and grouped accuracy,
    reliability bins.

    ``class_counts``: training samples per class (for the many/medium/few and head/med/tail
    groups; ``None`` leaves the group keys ``None``). ``rank_split``: [a, b] frequency-rank cut points.
    """
    probs, labels = _as_tensors(probs, labels)
    check_probs(probs, labels)
    n_bins = _check_bins(n_bins)
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()
    num_classes = probs.shape[1]
    n = probs.shape[0]
    topk = probs.topk(min(5, num_classes), dim=1)
    correct_k = (topk.indices == labels[:, None])
    # The prediction is the first maximum (as argmax, and as in ece()); topk may order tied entries otherwise.
    pred = topk.indices[:, 0]
    tied = (topk.values[:, 0] == topk.values[:, 1]).nonzero().squeeze(1)
    if tied.numel():
        pred = pred.clone()
        pred[tied] = probs[tied].argmax(dim=1)
    correct_bool = pred == labels
    correct = correct_bool.double()
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
        'top5': float((correct_k.any(dim=1) | correct_bool).double().mean()),
        'ece': float((counts_t / n * gaps).sum()),
        'mce': float(gaps[nonempty].max()),
        'adaptive_ece': _adaptive_ece(topk.values[:, 0], correct_bool, n_bins),
        'classwise_ece': _classwise_ece(probs, labels, n_bins, topk),
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


SEED_RUN_KEYS = ('top1', 'ece', 'adaptive_ece', 'nll')


def summarize_seed_runs(runs: Sequence[Dict[str, Optional[float]]],
                        keys: Sequence[str] = SEED_RUN_KEYS) -> Dict[str, Dict[str, Optional[float]]]:
    """Mean and sample standard deviation over training seeds: ``{key: {'mean', 'sd', 'n'}}``.

    ``runs``: one mapping per seed (``seed_runs`` of metrics.json: ``{seed, top1, ece, adaptive_ece, nll}``,
    rates as fractions). A run without a value for a key (``None`` or absent) is left out of that key's
    statistics, so ``n`` counts the runs that have one. ``sd`` is the sample SD (ddof=1:
    sqrt(sum (x - mean)^2 / (n - 1))), ``None`` for n < 2; ``mean`` is ``None`` for n = 0. Sums use
    ``math.fsum``, so the result does not depend on the order of the runs.
    """
    import math

    out: Dict[str, Dict[str, Optional[float]]] = {}
    for key in keys:
        values = [float(run[key]) for run in runs if run.get(key) is not None]
        n = len(values)
        mean = math.fsum(values) / n if n else None
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n >= 2 else None
        out[key] = {'mean': mean, 'sd': sd, 'n': n}
    return out
