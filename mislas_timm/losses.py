"""Losses: label-aware smoothing (stage 2), mixup cross-entropy and Balanced Softmax (stage 1).

Notation: K classes with training counts N_y; N_1 = max, N_K = min; eps_1 (``smooth_head``) and
eps_K (``smooth_tail``) are the smoothing factors of the most and least frequent class.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    'LAS_SHAPES', 'LAS_FORMULATIONS', 'las_smoothing', 'LabelAwareSmoothing',
    'mixup_batch', 'mixup_cross_entropy', 'balanced_softmax_logits', 'BalancedSoftmaxCrossEntropy',
]

LAS_SHAPES = ('concave', 'linear', 'convex', 'exp')
LAS_FORMULATIONS = ('official', 'paper')


def las_smoothing(
        cls_num_list: Sequence[int],
        smooth_head: float,
        smooth_tail: float,
        shape: str = 'concave',
        power: Optional[float] = None,
) -> torch.Tensor:
    """Per-class smoothing factors eps_y = f(N_y) of label-aware smoothing (paper eq. 4).

    With t_y = (N_y - N_K) / (N_1 - N_K):

    - concave: eps_y = eps_K + (eps_1 - eps_K) * sin(pi / 2 * t_y)
    - linear:  eps_y = eps_K + (eps_1 - eps_K) * t_y
    - convex:  eps_y = eps_1 + (eps_1 - eps_K) * sin(3 pi / 2 + pi / 2 * t_y)
    - exp:     eps_y = eps_K + (eps_1 - eps_K) * t_y ** power   (reference code only)

    Balanced data (N_1 == N_K) makes t_y = 0 / 0. Every class is then a head class (N_y = N_1),
    so every class gets eps_1, the value all shapes take at N_y = N_1.

    Returns a float64 tensor of shape (K,).
    """
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() < 2:
        raise ValueError(f'cls_num_list must list the training count of every class (>= 2 classes), got {list(cls_num_list)!r}')
    if bool((counts <= 0).any()):
        zero = [i for i, n in enumerate(counts.tolist()) if n <= 0]
        raise ValueError(f'cls_num_list has classes with no training samples (classes {zero}): '
                         'every class needs at least one sample; drop those classes from the data first')
    for name, value in (('smooth_head', smooth_head), ('smooth_tail', smooth_tail)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f'{name} must be in [0, 1), got {value}')
    if shape not in LAS_SHAPES:
        raise ValueError(f'shape must be one of {LAS_SHAPES}, got {shape!r}')
    if shape == 'exp' and power is None:
        raise ValueError("shape='exp' needs a power, e.g. LabelAwareSmoothing(..., shape='exp', power=2.0)")
    n_head, n_tail = counts.max(), counts.min()
    if n_head == n_tail:
        return torch.full_like(counts, float(smooth_head))
    t = (counts - n_tail) / (n_head - n_tail)
    span = smooth_head - smooth_tail
    if shape == 'concave':
        return smooth_tail + span * torch.sin(t * math.pi / 2)
    if shape == 'linear':
        return smooth_tail + span * t
    if shape == 'convex':
        return smooth_head + span * torch.sin(1.5 * math.pi + t * math.pi / 2)
    return smooth_tail + span * t.pow(power)


class LabelAwareSmoothing(nn.Module):
    """Cross-entropy with label-aware smoothing (MiSLAS stage 2).

    For a sample of class y with smoothing eps = eps_y (see :func:`las_smoothing`) and
    log-probabilities log p = log_softmax(z):

    - ``formulation="official"`` (the reference code; reproduces the published numbers):
      loss = (1 - eps) * (-log p_y) + eps * mean_i(-log p_i),
      i.e. target q_y = 1 - eps + eps / K, q_i = eps / K for i != y
      (timm's ``LabelSmoothingCrossEntropy`` with a per-class eps).
    - ``formulation="paper"`` (paper eq. 3): q_y = 1 - eps, q_i = eps / (K - 1) for i != y;
      loss = -sum_i q_i log p_i. Its minimiser has logit gap log((K - 1)(1 - eps) / eps).

    ``forward`` returns the batch mean.
    """

    def __init__(
            self,
            cls_num_list: Sequence[int],
            smooth_head: float,
            smooth_tail: float,
            shape: str = 'concave',
            power: Optional[float] = None,
            formulation: str = 'official',
    ):
        super().__init__()
        if formulation not in LAS_FORMULATIONS:
            raise ValueError(f'formulation must be one of {LAS_FORMULATIONS}, got {formulation!r}')
        self.formulation = formulation
        self.shape = shape
        smooth = las_smoothing(cls_num_list, smooth_head, smooth_tail, shape, power)
        self.register_buffer('smooth', smooth.float(), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.smooth.numel()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f'logits must have shape (batch, {self.num_classes}), got {tuple(logits.shape)}')
        if target.shape != logits.shape[:1]:
            raise ValueError(f'target must have shape ({logits.shape[0]},) of class indices, got {tuple(target.shape)}')
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f'target holds labels outside [0, {self.num_classes - 1}]')
        eps = self.smooth.to(logits.device)[target]
        log_probs = F.log_softmax(logits.float(), dim=-1)
        nll = -log_probs.gather(1, target[:, None]).squeeze(1)
        if self.formulation == 'official':
            smooth_loss = -log_probs.mean(dim=-1)
            loss = (1.0 - eps) * nll + eps * smooth_loss
        else:
            others = -log_probs.sum(dim=-1) - nll
            loss = (1.0 - eps) * nll + eps / (self.num_classes - 1) * others
        return loss.mean()

    def extra_repr(self) -> str:
        return f'num_classes={self.num_classes}, shape={self.shape!r}, formulation={self.formulation!r}'


def mixup_batch(
        images: torch.Tensor,
        targets: torch.Tensor,
        alpha: float,
        rng: Optional[np.random.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018) as in the reference: one lambda ~ Beta(alpha, alpha) per batch.

    x~ = lambda * x + (1 - lambda) * x[perm]; returns (x~, y_a = y, y_b = y[perm], lambda).
    ``alpha <= 0`` disables mixing (lambda = 1). ``rng`` makes the draw reproducible.
    """
    if alpha <= 0:
        return images, targets, targets, 1.0
    rng = rng if rng is not None else np.random.default_rng()
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    mixed = lam * images + (1.0 - lam) * images[perm]
    return mixed, targets, targets[perm], lam


def mixup_cross_entropy(logits: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda * CE(z, y_a) + (1 - lambda) * CE(z, y_b): CE against the mixed one-hot target."""
    return lam * F.cross_entropy(logits, y_a) + (1.0 - lam) * F.cross_entropy(logits, y_b)


def balanced_softmax_logits(logits: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Balanced Softmax (Ren et al. 2020): the training-time logits z_j + log pi_j.

    With pi_j = N_j / N the training class prior, cross-entropy on ``softmax(z + log pi)`` is the
    Balanced Softmax loss ``-log(N_y exp(z_y) / sum_j N_j exp(z_j))`` (the logit-adjusted loss of
    Menon et al. 2021 with tau = 1). At test time the plain logits z are used, so the model is
    unchanged for inference. Composes with mixup: pass the adjusted logits to
    :func:`mixup_cross_entropy`.
    """
    return logits + log_prior.to(device=logits.device, dtype=logits.dtype)


class BalancedSoftmaxCrossEntropy(nn.Module):
    """Cross-entropy of :func:`balanced_softmax_logits`; ``class_counts`` are the training counts N_j."""

    def __init__(self, class_counts: Sequence[int]):
        super().__init__()
        counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        if counts.ndim != 1 or len(counts) < 2 or bool((counts <= 0).any()):
            raise ValueError('BalancedSoftmaxCrossEntropy needs a positive training count for every class '
                             f'(got {list(class_counts)}); a class without training images has no prior')
        self.register_buffer('log_prior', (counts / counts.sum()).log().float())

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        return balanced_softmax_logits(logits, self.log_prior)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.adjust(logits), target)
