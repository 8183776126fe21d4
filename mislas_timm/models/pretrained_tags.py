"""The published MiSLAS weights as timm pretrained tags: one table, read by the model families.

Each row is ``(architecture, tag, description)``; the weights live in the Hub repository
``mislas-timm/<architecture>.<tag>`` (``hf_hub_id`` written out in full in the default cfg), so
``timm.create_model("resnet32_cifar.cifar10_lt_if100_mislas", pretrained=True)`` loads them like
``resnet50.a1_in1k`` (from the copy shipped with the package first, see below), and
``timm.list_pretrained("*cifar*")`` lists them. timm makes the first tag of an architecture the
default of its bare name: for ``resnet32_cifar`` that is the IF100 MiSLAS model, the best
calibrated of the zoo, so ``timm.create_model("resnet32_cifar", pretrained=True)`` gives it.

A tag whose Hub folder ships with the package also gets timm's ``file`` key, the folder's
``model.safetensors``: timm loads ``file`` before ``hf_hub_id`` (when the cfg names no ``source``),
so shipped weights load offline, with no network call, and the Hub serves the tags not shipped.
:func:`shipped_folder` is the one place that says where a tag's folder is; the resolver of model
sources (``mislas_timm.sources``), the zoo and the demo all ask it.

This module is data and that lookup only: the zoo (``mislas_timm.zoo``) reads it too, never the
other way round.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ['HUB_ORG', 'CIFAR10_CLASSES', 'PRETRAINED_TAGS', 'hub_id', 'tags_of', 'zoo_dirs', 'shipped_folder']

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


# The wheel carries the zoo's folders inside the package (setup.py copies model_cards/ there at build
# time); a checkout (editable install) reads model_cards/ at the repository root, the source of truth.
PACKAGE_ZOO_DIR = Path(__file__).resolve().parents[1] / 'model_cards'
_CHECKOUT = Path(__file__).resolve().parents[2]


def zoo_dirs() -> List[Path]:
    """Where shipped folders are looked for, in order: ``$MISLAS_ZOO_DIR`` alone when set (a copy kept
    elsewhere), else in a checkout the repository's ``model_cards/`` (the source of truth), then the
    package's copy (what a wheel installs)."""
    env = os.environ.get('MISLAS_ZOO_DIR')
    if env:
        return [Path(env).expanduser().resolve()]
    # Only a checkout has pyproject.toml beside the package; in site-packages a stray top-level
    # model_cards/ of some other distribution must not be taken for ours.
    if (_CHECKOUT / 'pyproject.toml').is_file():
        return [_CHECKOUT / 'model_cards', PACKAGE_ZOO_DIR]
    return [PACKAGE_ZOO_DIR]


def shipped_folder(name: str) -> Optional[Path]:
    """The shipped Hub folder of the zoo tag ``name`` (``<arch>.<tag>``), or None when no copy is at hand."""
    for root in zoo_dirs():
        folder = root / name
        if (folder / 'config.json').is_file() and (folder / 'model.safetensors').is_file():
            return folder
    return None


def label_names_of(arch: str, tag: str) -> Tuple[str, ...]:
    return CIFAR10_CLASSES if tag.startswith('cifar10_') else ()


def default_cfg_overrides(arch: str) -> Dict[str, Dict]:
    """``{"<arch>.<tag>": cfg keys}`` for the default cfgs of ``arch``."""
    out: Dict[str, Dict] = {}
    for tag, _ in tags_of(arch):
        names = label_names_of(arch, tag)
        cfg = {'hf_hub_id': hub_id(arch, tag), 'num_classes': len(names) or 10, 'label_names': list(names)}
        folder = shipped_folder(f'{arch}.{tag}')
        if folder is not None:
            cfg['file'] = str(folder / 'model.safetensors')
        out[f'{arch}.{tag}'] = cfg
    return out
