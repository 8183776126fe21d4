"""Shifted test distributions: the test-agnostic long-tail protocol of LADE (Hong et al. 2021) / SADE
(Zhang et al. 2022).

A model trained on long-tailed data is usually tested on a balanced test split. The test-agnostic
protocol also tests it on long-tailed ("forward", same order as training) and inversely long-tailed
("backward") subsets of that split, with test imbalance factor R = N_max / N_min:

    rank r = 0..K-1 of the classes in *training* frequency order (most frequent first, ties by class
    index), n = images per class of the balanced test split:

        forward:  rank r keeps  floor(n * R ** (-r / (K - 1)))  test images
        backward: rank r keeps  floor(n * R ** (-(K - 1 - r) / (K - 1)))  (the rarest training class keeps n)

R = 1 is the usual balanced test (all images). Which images a class keeps is a seeded random choice
among that class's test images. Pure functions (numpy only): no model, no data set loading.
(Formerly ``mislas_timm.data.test_shift``, now a deprecated alias of this module.)
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

__all__ = ['TEST_PROFILES', 'DEFAULT_SHIFT_RATIOS', 'check_test_shift', 'training_order', 'shift_name',
           'shifted_test_counts', 'shifted_test_indices', 'max_test_imbalance']

TEST_PROFILES = ('forward', 'backward')

# The test imbalance factors of SADE's tables (forward 50 ... 2, uniform 1, backward 2 ... 50).
DEFAULT_SHIFT_RATIOS = (50, 25, 10, 5, 2)

# floor(n * R ** -e) computed as the reference does, plus a hair so that float rounding never drops an
# exact integer (49 * (1 / 49) == 0.9999999999999999 would leave the rarest class 0 images at R = n).
_EPS = 1e-9


def check_test_shift(imbalance: float, profile: str) -> float:
    """``imbalance`` as a float after checking it (>= 1, finite) and ``profile``; ValueError otherwise."""
    try:
        r = float(imbalance)
    except (TypeError, ValueError):
        raise ValueError(f'test imbalance must be a number >= 1 (N_max / N_min of the test set), '
                         f'got {imbalance!r}') from None
    if not math.isfinite(r) or r < 1:
        raise ValueError(f'test imbalance must be >= 1 (N_max / N_min of the test set; 1 is the balanced test), '
                         f'got {imbalance!r}')
    if profile not in TEST_PROFILES:
        raise ValueError(f'unknown test profile {profile!r}; choose one of {", ".join(TEST_PROFILES)}')
    return r


def shift_name(imbalance: float, profile: str) -> str:
    """Short name of a test distribution: ``forward-50``, ``backward-10``, ``uniform`` (R = 1)."""
    r = check_test_shift(imbalance, profile)
    return 'uniform' if r == 1 else f'{profile}-{r:g}'


def training_order(train_counts: Sequence[int]) -> List[int]:
    """Class indices from the most to the least frequent in training; ties by class index."""
    counts = [int(c) for c in train_counts]
    return sorted(range(len(counts)), key=lambda c: (-counts[c], c))


def _per_class_n(test_labels: np.ndarray, num_classes: int) -> int:
    """n of the formula: the per-class count of a balanced split, else its smallest class count."""
    if test_labels.size and (test_labels.min() < 0 or test_labels.max() >= num_classes):
        raise ValueError(f'test labels must lie in [0, {num_classes - 1}] (the model has {num_classes} classes), '
                         f'found {test_labels.min()}..{test_labels.max()}')
    available = np.bincount(test_labels, minlength=num_classes)
    empty = np.flatnonzero(available == 0)
    if empty.size:
        raise ValueError(f'class {int(empty[0])} has no test images, so no shifted test set can be drawn; '
                         'evaluate with test imbalance 1 or on a test split that covers every class')
    return int(available.min())


def shifted_test_counts(n: int, train_counts: Sequence[int], imbalance: float, profile: str = 'forward') -> List[int]:
    """Test images kept per class (in class index order) for a balanced split of ``n`` per class.

    With the classes ranked r = 0..K-1 by ``train_counts`` (descending, ties by class index):
    forward keeps ``floor(n * R ** (-r / (K - 1)))`` for rank r, backward
    ``floor(n * R ** (-(K - 1 - r) / (K - 1)))``. ``shifted_test_counts(20, [9, 5, 3, 1], 10)`` ==
    ``[20, 9, 4, 2]``. ValueError where a class would keep 0 images (R > n).
    """
    r = check_test_shift(imbalance, profile)
    k = len(train_counts)
    if k < 1:
        raise ValueError('train_counts is empty: pass the training images per class')
    n = int(n)
    if r > n:
        raise ValueError(f'test imbalance {r:g} leaves the rarest shifted class with 0 test images: the test split '
                         f'has n = {n} images per class, so the largest allowed test imbalance is {n}')
    ratio = 1.0 / r
    counts = [0] * k
    for rank, c in enumerate(training_order(train_counts)):
        e = rank if profile == 'forward' else k - 1 - rank
        counts[c] = n if k == 1 or r == 1 else int(n * ratio ** (e / (k - 1.0)) + _EPS)
    return counts


def shifted_test_indices(test_labels: Sequence[int], train_counts: Sequence[int], imbalance: float,
                         profile: str = 'forward', seed: int = 0) -> np.ndarray:
    """Indices (ascending) into the test split of the shifted test set (see the module docstring).

    Class c keeps ``shifted_test_counts(n, train_counts, imbalance, profile)[c]`` of its test
    images, chosen with ``np.random.RandomState(seed)`` (a permutation of the class's indices per
    class, classes in index order). n is the per-class count of the test split when it is balanced
    (1,000 for CIFAR-10); for an unbalanced split n is its *smallest* class count, so every class
    can supply its share. ``imbalance`` 1 keeps every image (balanced or not), in split order.

    ValueError (one line) for an imbalance below 1, an unknown profile, an imbalance larger than n
    (a class would keep 0 images; the message names the largest allowed value, n), a class without
    test images, or labels outside ``train_counts``' classes.
    """
    r = check_test_shift(imbalance, profile)
    labels = np.asarray(test_labels, dtype=np.int64).reshape(-1)
    num_classes = len(train_counts)
    if r == 1:
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f'test labels must lie in [0, {num_classes - 1}], found {labels.min()}..{labels.max()}')
        return np.arange(labels.size, dtype=np.int64)
    n = _per_class_n(labels, num_classes)
    counts = shifted_test_counts(n, train_counts, r, profile)
    rng = np.random.RandomState(int(seed))
    kept = []
    for c, need in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        kept.append(rng.permutation(idx)[:need])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def max_test_imbalance(test_labels: Sequence[int], num_classes: Optional[int] = None) -> int:
    """The largest test imbalance the split allows: its smallest class count n."""
    labels = np.asarray(test_labels, dtype=np.int64).reshape(-1)
    return _per_class_n(labels, int(num_classes if num_classes is not None else labels.max() + 1))

