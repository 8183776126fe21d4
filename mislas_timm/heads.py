"""Stage-2 classifier heads: LWS scale, the MiSLAS head, and folding into one linear layer.

The MiSLAS head (paper section 3.2, cRT and LWS combined) computes

    z = diag(s) (r W + dW)^T x + diag(s) b

with W, b the stage-1 classifier, dW its learned correction and s a learnable per-class scale
initialised to 1. Following the reference code we take r = 1 and train ``W + dW`` as one tensor:
the head holds a copy of the stage-1 ``nn.Linear`` and keeps training it (at ``lr * lr_factor``)
together with ``s`` (at ``lr``). The ablations are the same module with parts frozen:
``lws`` learns only s; ``crt`` re-initialises the linear layer and has no scale.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ['LearnableWeightScaling', 'ScaledLinearHead', 'fold_linear_head']


class LearnableWeightScaling(nn.Module):
    """LWS (Kang et al. 2020): z -> diag(s) z with a learnable per-class scale s, initialised to 1."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scale.to(logits.dtype)


class ScaledLinearHead(nn.Module):
    """z = diag(s) (W x + b): a linear classifier ``fc`` followed by an optional LWS scale.

    ``head="mislas"``: fc trainable, scale trainable; ``"lws"``: fc frozen, scale trainable;
    ``"crt"``: fc re-initialised and trainable, no scale.
    """

    def __init__(self, fc: nn.Linear, kind: str = 'mislas'):
        super().__init__()
        if not isinstance(fc, nn.Linear):
            raise TypeError(f'ScaledLinearHead wraps an nn.Linear classifier, got {type(fc).__name__}')
        if kind not in ('mislas', 'lws', 'crt'):
            raise ValueError(f"head must be 'mislas', 'lws' or 'crt', got {kind!r}")
        self.kind = kind
        self.fc = copy.deepcopy(fc)
        if kind == 'crt':
            self.fc.reset_parameters()
        self.fc.requires_grad_(kind != 'lws')
        self.lws = LearnableWeightScaling(fc.out_features) if kind != 'crt' else None

    @property
    def in_features(self) -> int:
        return self.fc.in_features

    @property
    def out_features(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(x)
        return self.lws(z) if self.lws is not None else z


@torch.no_grad()
def fold_linear_head(head: ScaledLinearHead) -> nn.Linear:
    """One ``nn.Linear`` with the same logits: W' = diag(s) W, b' = diag(s) b."""
    fc = head.fc
    folded = nn.Linear(fc.in_features, fc.out_features, bias=fc.bias is not None,
                       device=fc.weight.device, dtype=fc.weight.dtype)
    scale = head.lws.scale.to(fc.weight.dtype) if head.lws is not None else torch.ones_like(fc.weight[:, 0])
    folded.weight.copy_(fc.weight * scale[:, None])
    if fc.bias is not None:
        folded.bias.copy_(fc.bias * scale)
    return folded
