"""Class-balanced sampling for stage 2, and the instance sampler of stage 1, both DDP-aware.

Who shards: these samplers. Each rank draws its own share, so their data loaders must NOT go
through ``accelerator.prepare`` (which would split the batches a second time); the training loop
moves batches to the device itself.
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ['ClassAwareSampler', 'InstanceSampler', 'class_aware_sequence']


def class_aware_sequence(
        labels: Sequence[int],
        num_samples: int,
        samples_per_class: int = 4,
        rng: Optional[np.random.RandomState] = None,
) -> List[int]:
    """The reference class-aware stream (Shen et al. 2016; decoupling / MiSLAS code).

    Classes are visited in a cycle that is reshuffled each time it is exhausted; every visit draws
    ``samples_per_class`` consecutive samples from the chosen class's own cycle of indices (also
    reshuffled when exhausted). Returns the first ``num_samples`` indices of the stream.
    """
    rng = rng if rng is not None else np.random.RandomState()
    labels = np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    per_class = {int(c): np.where(labels == c)[0] for c in classes}

    class CycleIter:
        def __init__(self, items: np.ndarray):
            self.items = np.array(items)
            self.pos = len(self.items)

        def next(self) -> int:
            if self.pos == len(self.items):
                rng.shuffle(self.items)
                self.pos = 0
            self.pos += 1
            return int(self.items[self.pos - 1])

    class_cycle = CycleIter(classes)
    sample_cycles = {c: CycleIter(idx) for c, idx in per_class.items()}
    out: List[int] = []
    while len(out) < num_samples:
        cycle = sample_cycles[class_cycle.next()]
        out.extend(cycle.next() for _ in range(samples_per_class))
    return out[:num_samples]


class _ShardedEpochSampler(Sampler[int]):
    """Shared state of the samplers: this rank's place among ``num_replicas`` and a seeded epoch."""

    def __init__(self, num_replicas: int, rank: int, seed: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank must be in [0, num_replicas={num_replicas}), got {rank}')
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed the next pass with (seed, epoch), as ``DistributedSampler``."""
        self.epoch = epoch


class ClassAwareSampler(_ShardedEpochSampler):
    """Class-balanced sampler with the reference semantics, sharded across processes.

    The nominal length is n_max * K (n_max = size of the largest class), as the reference. With
    ``num_replicas`` R the global stream (padded to a multiple of R whole class visits of
    ``samples_per_class`` indices) is cut into R contiguous, equal shares: rank r gets share r.
    The shares are disjoint, their concatenation is the single-process stream, and each holds
    whole class cycles, so every rank is class-balanced on its own (a round-robin deal of visits
    would not be: with K = 4 classes and R = 2, rank 0 could get a class twice per cycle).
    ``set_epoch`` reseeds the stream with (seed, epoch).
    """

    def __init__(
            self,
            labels: Sequence[int],
            samples_per_class: int = 4,
            num_replicas: int = 1,
            rank: int = 0,
            seed: int = 0,
            num_samples: Optional[int] = None,
    ):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError('labels must be a non-empty 1-D sequence of class indices')
        if samples_per_class < 1:
            raise ValueError(f'samples_per_class must be >= 1, got {samples_per_class}')
        super().__init__(num_replicas, rank, seed)
        self.labels = labels
        self.samples_per_class = samples_per_class
        counts = np.bincount(labels)
        self.nominal_length = int(counts.max()) * int((counts > 0).sum()) if num_samples is None else int(num_samples)
        visits = math.ceil(self.nominal_length / samples_per_class)
        self.visits_per_rank = math.ceil(visits / num_replicas)
        self.total_size = self.visits_per_rank * num_replicas * samples_per_class

    def global_stream(self) -> List[int]:
        """The whole (all ranks) stream of this epoch, padded to whole visits for every rank."""
        rng = np.random.RandomState([self.seed, self.epoch])
        return class_aware_sequence(self.labels, self.total_size, self.samples_per_class, rng)

    def __iter__(self) -> Iterator[int]:
        share = len(self)
        return iter(self.global_stream()[self.rank * share:(self.rank + 1) * share])

    def __len__(self) -> int:
        return self.visits_per_rank * self.samples_per_class


class InstanceSampler(_ShardedEpochSampler):
    """Instance-balanced (plain shuffled) sampler for stage 1, sharded like ``DistributedSampler``.

    Each epoch is a permutation seeded with (seed, epoch), padded to a multiple of R; rank r takes
    positions r, r + R, ...
    """

    def __init__(self, num_items: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if num_items < 1:
            raise ValueError('the training set is empty')
        super().__init__(num_replicas, rank, seed)
        self.num_items = num_items
        self.shuffle = shuffle
        self.per_rank = math.ceil(num_items / num_replicas)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = np.random.RandomState([self.seed, self.epoch]).permutation(self.num_items)
        else:
            order = np.arange(self.num_items)
        total = self.per_rank * self.num_replicas
        order = np.concatenate([order, order[:total - len(order)]])
        return iter(order[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_rank


def worker_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """A torch generator for a data loader's augmentation seeds, fixed by (seed, epoch, rank)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.RandomState([seed, epoch, rank]).randint(2 ** 31)))
    return g
