"""The published MiSLAS weights as timm pretrained tags: one table, read by the model families.

Each row is ``(architecture, tag, description)``; the weights live in the Hub repository
``mislas-timm/<architecture>.<tag>`` (``hf_hub_id`` written out in full in the default cfg), so
``timm.create_model("resnet32_cifar.cifar10_lt_if100_mislas", pretrained=True)`` loads them
through huggingface_hub like ``resnet50.a1_in1k``, and ``timm.list_pretrained("*cifar*")`` lists
them. timm makes the first tag of an architecture the default of its bare name: for
``resnet32_cifar`` that is the IF100 MiSLAS model, the best calibrated of the zoo, so
``timm.create_model("resnet32_cifar", pretrained=True)`` gives it.

This module is data only: the zoo (``mislas_timm.zoo``) reads it too, never the other way round.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

__all__ = ['HUB_ORG', 'CIFAR10_CLASSES', 'PRETRAINED_TAGS', 'hub_id', 'tags_of']

HUB_ORG = 'mislas-timm'
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')

# (architecture, tag, what it is). Order matters: an architecture's first tag is its default.
PRETRAINED_TAGS: Tuple[Tuple[str, str, str], ...] = (
    ('resnet32_cifar', 'cifar10_lt_if100_mislas', 'MiSLAS (stage 2: label-aware smoothing + LWS head) on the mixup '
                                                  'stage 1, CIFAR-10-LT IF100'),
    ('resnet32_cifar', 'cifar10_lt_if50_mislas', 'MiSLAS on the mixup stage 1, CIFAR-10-LT IF50'),
    ('resnet32_cifar', 'cifar10_lt_if10_mislas', 'MiSLAS on the mixup stage 1, CIFAR-10-LT IF10'),
    ('resnet32_cifar', 'cifar10_lt_if100_ce', 'stage 1, plain cross-entropy (no mixup): the over-confident baseline, '
                                              'CIFAR-10-LT IF100'),
    ('resnet32_cifar', 'cifar10_lt_if100_mixup', 'stage 1 with mixup (MiSLAS stage 1), CIFAR-10-LT IF100'),
    ('resnet32_cifar', 'cifar10_lt_if100_crt', 'cRT (classifier re-trained, plain CE, class-balanced) on the mixup '
                                               'stage 1, CIFAR-10-LT IF100'),
    ('resnet32_cifar', 'cifar10_lt_if100_lws', 'LWS (learnable weight scaling only) on the mixup stage 1, '
                                               'CIFAR-10-LT IF100'),
)


def hub_id(arch: str, tag: str) -> str:
    return f'{HUB_ORG}/{arch}.{tag}'


def tags_of(arch: str) -> List[Tuple[str, str]]:
    """(tag, description) of ``arch`` in table order."""
    return [(tag, text) for a, tag, text in PRETRAINED_TAGS if a == arch]


def label_names_of(arch: str, tag: str) -> Tuple[str, ...]:
    return CIFAR10_CLASSES if tag.startswith('cifar10_') else ()


def default_cfg_overrides(arch: str) -> Dict[str, Dict]:
    """``{"<arch>.<tag>": cfg keys}`` for the default cfgs of ``arch``."""
    out: Dict[str, Dict] = {}
    for tag, _ in tags_of(arch):
        names = label_names_of(arch, tag)
        out[f'{arch}.{tag}'] = {'hf_hub_id': hub_id(arch, tag), 'num_classes': len(names) or 10,
                                'label_names': list(names)}
    return out
