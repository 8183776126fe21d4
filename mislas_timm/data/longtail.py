"""Long-tailed subsets of balanced data sets (CIFAR-LT, Cao et al. 2019; used by MiSLAS).

Class i (0-based) of K keeps ``int(n_max * IF ** (-i / (K - 1)))`` images ("exp" profile), where
IF = N_1 / N_K is the imbalance factor; the "step" profile keeps n_max images for the first
half of the classes and ``int(n_max / IF)`` for the rest. Which images are kept is a seeded random
choice per class (the reference's ``np.random.seed(0)`` + per-class shuffle, reproduced exactly).
"""
from __future__ import annotations

import hashlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['LONGTAIL_PROFILES', 'longtail_counts', 'longtail_indices', 'validation_split', 'longtail_view',
           'split_sha256', 'class_counts', 'stratified_holdout']

LONGTAIL_PROFILES = ('exp', 'step')


def longtail_counts(n_max: int, num_classes: int, imb_factor: float, profile: str = 'exp') -> List[int]:
    """Images kept per class: ``longtail_counts(5000, 10, 100)`` ==
    ``[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]``.

    exp:  N_i = int(n_max * (1 / IF) ** (i / (K - 1)))
    step: N_i = n_max for i < K // 2, int(n_max / IF) otherwise
    """
    if int(n_max) != n_max or n_max < 1:
        raise ValueError(f'n_max must be a positive integer (images of the largest class), got {n_max!r}')
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f'num_classes must be an integer >= 2, got {num_classes!r}')
    if not imb_factor >= 1:
        raise ValueError(f'imb_factor is N_1 / N_K and must be >= 1 (e.g. 100, not the reference code\'s 0.01), '
                         f'got {imb_factor!r}')
    if profile not in LONGTAIL_PROFILES:
        raise ValueError(f'profile must be one of {LONGTAIL_PROFILES}, got {profile!r}')
    ratio = 1.0 / imb_factor  # the reference passes this ratio (0.01 for IF 100): same float, same counts
    if profile == 'exp':
        counts = [int(n_max * ratio ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    else:
        counts = [int(n_max) if i < num_classes // 2 else int(n_max * ratio) for i in range(num_classes)]
    empty = [i for i, n in enumerate(counts) if n < 1]
    if empty:
        raise ValueError(f'imb_factor={imb_factor} leaves classes {empty} with 0 images (n_max={n_max}): '
                         f'use imb_factor <= {n_max} or a larger n_max')
    return counts


def class_counts(labels: Sequence[int], num_classes: int) -> List[int]:
    """Number of samples of each class 0..num_classes-1."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'labels must lie in [0, {num_classes - 1}], found {labels.min()}..{labels.max()}')
    return np.bincount(labels, minlength=num_classes).tolist()


def longtail_indices(labels: Sequence[int], counts: Sequence[int], data_seed: int = 0) -> np.ndarray:
    """Indices of a long-tailed subset: ``counts[c]`` randomly chosen samples of each class c.

    Reproduces the reference: ``np.random.seed(data_seed)``, then for c = 0..K-1 shuffle the
    indices of class c (in data order) and keep the first counts[c]. Returned in that order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    available = class_counts(labels, len(counts))
    short = [(c, need, have) for c, (need, have) in enumerate(zip(counts, available)) if need > have]
    if short:
        c, need, have = short[0]
        raise ValueError(f'class {c} needs {need} images for the long-tail view but the data has only {have}; '
                         'lower n_max or pass a larger training split')
    rng = np.random.RandomState(data_seed)
    kept = []
    for c, need in enumerate(counts):
        idx = np.where(labels == c)[0]
        rng.shuffle(idx)
        kept.append(idx[:need])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)


def validation_split(labels: Sequence[int], kept: Sequence[int], val_per_class: int,
                     data_seed: int = 0, cap: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Split a long-tail view into (training indices, validation indices), never touching the test split.

    Class c's ``val_per_class`` validation images are drawn (seeded by ``data_seed``) from the
    images of class c that the long-tail view does NOT keep. A class short of such spare images
    (the head class always is: it keeps all n_max of its images) takes the shortfall from its kept
    images, which then leave the training set: on CIFAR-10-LT IF100 with 20 per class, class 0
    trains on 4,980 images and the other classes on the paper's counts.

    ``kept`` keeps its order (minus the images moved to validation); the validation indices are
    sorted. The draw uses its own random stream, so the kept view itself stays the reference's.

    ``cap`` (data used as it is, no long-tail view): a class short of images gives all but one
    of them instead of raising, so every class keeps a training image; the draws of the classes
    that are not short are the same as without ``cap``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    kept = np.asarray(kept, dtype=np.int64)
    if int(val_per_class) != val_per_class or val_per_class < 0:
        raise ValueError(f'val_per_class must be a whole number >= 0, got {val_per_class!r}')
    if val_per_class == 0:
        return kept, np.zeros(0, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if labels.size else 0
    in_view = np.zeros(len(labels), dtype=bool)
    in_view[kept] = True
    rng = np.random.RandomState([int(data_seed), 1])  # a stream apart from longtail_indices' seed
    val: List[np.ndarray] = []
    moved: List[np.ndarray] = []
    for c in range(num_classes):
        spare = np.where((labels == c) & ~in_view)[0]
        take = min(int(val_per_class), len(spare))
        val.append(rng.choice(spare, take, replace=False) if take else spare[:0])
        short = int(val_per_class) - take
        if short:
            own = kept[labels[kept] == c]
            if cap:
                short = min(short, max(len(own) - 1, 0))
                if not short:
                    continue
            if short >= len(own):
                raise ValueError(f'class {c} has {len(own) + take} images for training and validation together; '
                                 f'{val_per_class} for validation would leave none to train on: lower val_per_class')
            moved.append(rng.choice(own, short, replace=False))
            val.append(moved[-1])
    out = np.concatenate(moved) if moved else np.zeros(0, dtype=np.int64)
    train = kept[~np.isin(kept, out)]
    return train, np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)


def longtail_view(labels: Sequence[int], num_classes: int, imb_factor: Optional[float], profile: str = 'exp',
                  data_seed: int = 0, n_max: Optional[int] = None,
                  val_per_class: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) of a balanced training split: the long-tail view
    (:func:`longtail_counts` with n_max = the largest class unless given, then
    :func:`longtail_indices`) and its held-out validation images (:func:`validation_split`).
    ``imb_factor`` None keeps the whole split, and then a class short of images gives all but one
    to validation (``validation_split(cap=True)``: ``dataset.val_per_class``). The one place both
    ``train.py`` and the post-hoc calibration CLI build the view, so a model's recorded checksums
    can be reproduced."""
    labels = np.asarray(labels, dtype=np.int64)
    if imb_factor:
        n_max = n_max or max(class_counts(labels, num_classes))
        kept = longtail_indices(labels, longtail_counts(int(n_max), num_classes, imb_factor, profile), data_seed)
    else:
        kept = np.arange(len(labels))
    return validation_split(labels, kept, int(val_per_class or 0), data_seed, cap=not imb_factor)


def split_sha256(indices: Sequence[int]) -> str:
    """Checksum of a subset: sha256 of the sorted indices written as ASCII decimals joined by ','."""
    text = ','.join(str(int(i)) for i in sorted(int(i) for i in indices))
    return hashlib.sha256(text.encode('ascii')).hexdigest()


def stratified_holdout(labels: Sequence[int], num_classes: int, fraction: float,
                       seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(kept indices, held-out indices), both sorted: ``round(fraction * n_c)`` random images of
    each class c held out (at least one, at most all but one, so that every class with two or more
    images is both held out and kept). The test split of a data set that has none.

    Seeded by ``seed`` on its own random stream, apart from the long-tail view's and the validation
    split's, so the held-out images do not change with the training seed or the view.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 < fraction < 1:
        raise ValueError(f'the held-out fraction must lie in (0, 1), got {fraction!r}')
    rng = np.random.RandomState([int(seed), 2])
    held: List[np.ndarray] = []
    for c in range(int(num_classes)):
        idx = np.where(labels == c)[0]
        take = min(max(1, int(np.floor(fraction * len(idx) + 0.5))), len(idx) - 1)
        if take > 0:
            held.append(rng.choice(idx, take, replace=False))
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), out)
    return keep, out
