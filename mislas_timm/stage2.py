"""Turning any timm classifier into a stage-2 MiSLAS model, and back.

Stage 2 (paper section 3): the backbone is frozen (no gradient), the classifier is retrained on
class-balanced batches, and with shift-BN the backbone's BN layers re-estimate their running
statistics on the new stream while their affine parameters stay frozen.

``to_stage2`` returns a deep copy of the model whose classifier (found through timm's
``get_classifier()``) is replaced by a :class:`~mislas_timm.heads.ScaledLinearHead`. The copy's
``train()`` keeps the frozen backbone in eval mode (running statistics used, dropout and drop-path
off) except, with shift-BN, its BN layers, which run in train mode: batch statistics in the
forward pass and an exponential-moving-average update (BN's own momentum, starting from the
stage-1 statistics) of the running ones. ``fold_head`` folds the head into one plain linear layer
and returns an ordinary timm model.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Tuple, Type

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .heads import ScaledLinearHead, fold_linear_head

__all__ = ['to_stage2', 'fold_head', 'shift_bn', 'is_stage2', 'head_parameter_groups', 'classifier_path']

STAGE2_HEADS = ('mislas', 'lws', 'crt')


def classifier_path(model: nn.Module) -> str:
    """Dotted path of the module returned by ``model.get_classifier()``.

    Raises a ``TypeError`` naming the fix when the model is not a timm classifier with a linear head.
    """
    get_classifier = getattr(model, 'get_classifier', None)
    if not callable(get_classifier):
        raise TypeError(
            f'model ({type(model).__name__}) has no get_classifier(): pass a timm classification model, '
            "e.g. timm.create_model('resnet32_cifar', num_classes=10)")
    classifier = get_classifier()
    if isinstance(classifier, ScaledLinearHead):
        classifier = classifier.fc
    if not isinstance(classifier, nn.Linear):
        raise TypeError(
            f'model.get_classifier() is {type(classifier).__name__}, not nn.Linear: a stage-2 head needs a linear '
            'classifier; create the model with num_classes=K (not 0) and a linear head')
    for name, module in model.named_modules():
        if module is classifier:
            return name
    raise TypeError('model.get_classifier() is not a submodule of the model; cannot replace it')


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, module)


def shift_bn(model: nn.Module) -> nn.Module:
    """Shift-BN: put every BN layer of ``model`` in train mode with frozen affine parameters.

    In train mode BN normalises with batch statistics and updates its running statistics by
    running = (1 - momentum) * running + momentum * batch, so evaluation afterwards uses statistics
    re-estimated on the stage-2 (class-balanced) stream. weight and bias get ``requires_grad=False``.
    Works in place and returns ``model``; a stage-2 model's ``train()`` calls it on its backbone.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.train(True)
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
    return model


class _Stage2Mixin:
    """train() of a stage-2 model: backbone in eval mode, head in train mode, shift-BN if enabled."""

    _mislas_head_path: str
    _mislas_shift_bn: bool
    _mislas_base_class: Type[nn.Module]

    def train(self, mode: bool = True):
        nn.Module.train(self, False)
        if mode:
            self.training = True
            self.get_submodule(self._mislas_head_path).train(True)
            if self._mislas_shift_bn:
                shift_bn(self)
        return self


_STAGE2_CLASSES: Dict[type, type] = {}


def _stage2_class(base: type) -> type:
    if base not in _STAGE2_CLASSES:
        _STAGE2_CLASSES[base] = type(f'Stage2{base.__name__}', (_Stage2Mixin, base), {'__module__': base.__module__})
    return _STAGE2_CLASSES[base]


def is_stage2(model: nn.Module) -> bool:
    return isinstance(model, _Stage2Mixin)


def to_stage2(model: nn.Module, head: str = 'mislas', shift_bn: bool = True) -> nn.Module:
    """A new stage-2 model built from a trained stage-1 timm classifier; ``model`` is left untouched.

    Args:
        model: any timm classification model whose ``get_classifier()`` is an ``nn.Linear``.
        head: ``"mislas"`` (z = diag(s)(W + dW)^T x: classifier keeps training, LWS scale learned),
            ``"lws"`` (only the scale s is learned) or ``"crt"`` (classifier re-initialised and
            retrained, no scale).
        shift_bn: re-estimate the backbone's BN running statistics during stage 2 (affine frozen).

    Every backbone parameter gets ``requires_grad=False``; only the head trains.
    """
    if head not in STAGE2_HEADS:
        raise ValueError(f'head must be one of {STAGE2_HEADS}, got {head!r}')
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch nn.Module (a timm model), got {type(model).__name__}')
    if is_stage2(model):
        raise ValueError('model is already a stage-2 model; pass the stage-1 model (or fold_head(model) first)')
    path = classifier_path(model)
    new = copy.deepcopy(model)
    new.requires_grad_(False)
    new_head = ScaledLinearHead(new.get_submodule(path), kind=head)
    _set_submodule(new, path, new_head)
    new._mislas_head_path = path
    new._mislas_shift_bn = bool(shift_bn)
    new._mislas_base_class = type(model)
    new.__class__ = _stage2_class(type(model))
    new.train(model.training)
    return new


def fold_head(model: nn.Module) -> nn.Module:
    """An ordinary timm model with the stage-2 head folded into one ``nn.Linear`` (same logits).

    The result is a new model of the original class, with all parameters trainable again, whose
    state dict loads with ``strict=True`` into ``timm.create_model(arch, num_classes=K)``.
    """
    if not is_stage2(model):
        raise TypeError('fold_head expects a model returned by to_stage2(); this one has no stage-2 head')
    new = copy.deepcopy(model)
    path = new._mislas_head_path
    _set_submodule(new, path, fold_linear_head(new.get_submodule(path)))
    new.__class__ = new._mislas_base_class
    for attr in ('_mislas_head_path', '_mislas_shift_bn', '_mislas_base_class'):
        delattr(new, attr)
    new.requires_grad_(True)
    new.train(model.training)
    return new


def head_parameter_groups(model: nn.Module, lr: float, lr_factor: float) -> List[Dict]:
    """Optimizer groups of a stage-2 model, as the reference: classifier at lr * lr_factor, scale at lr.

    ``lr_factor`` applies to the MiSLAS head, which fine-tunes the stage-1 classifier; the cRT head's
    freshly initialised classifier trains at ``lr``.
    """
    if not is_stage2(model):
        raise TypeError('head_parameter_groups expects a model returned by to_stage2()')
    head: ScaledLinearHead = model.get_submodule(model._mislas_head_path)
    groups: List[Tuple[List, float]] = []
    fc_params = [p for p in head.fc.parameters() if p.requires_grad]
    if fc_params:
        groups.append((fc_params, lr * lr_factor if head.kind == 'mislas' else lr))
    if head.lws is not None:
        groups.append((list(head.lws.parameters()), lr))
    return [{'params': params, 'lr': group_lr, 'initial_lr': group_lr} for params, group_lr in groups]
