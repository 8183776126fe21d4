"""Stage 1's model: the timm architecture, started from ``model.init``, with the run's preprocessing."""
from __future__ import annotations

from typing import List

import torch

from ..config import TrainConfig
from ..initialization import check_arch as _check_arch, load_init_weights

__all__ = ['build_model']


def build_model(cfg: TrainConfig, num_classes: int, label_names: List[str]) -> torch.nn.Module:
    """Stage 1's timm model with num_classes, started from ``model.init``'s weights if the config names
    a source (:func:`mislas_timm.initialization.load_init_weights`), with the run's preprocessing in its
    pretrained_cfg."""
    import timm

    m = cfg.model
    _check_arch(m.arch)
    model = timm.create_model(m.arch, pretrained=m.pretrained, num_classes=num_classes, **m.kwargs)
    if m.init:
        source_cfg = load_init_weights(model, cfg, label_names)
        if source_cfg is not None:  # the source's architecture: its preprocessing (interpolation, ...) is the run's
            model.pretrained_cfg = model.default_cfg = source_cfg
    _apply_data_cfg(model, cfg, label_names)
    return model


def _apply_data_cfg(model: torch.nn.Module, cfg: TrainConfig, label_names: List[str]) -> None:
    pretrained_cfg = dict(model.pretrained_cfg)
    for key in ('input_size', 'mean', 'std', 'crop_pct'):
        value = getattr(cfg.data, key)
        if value is not None:
            pretrained_cfg[key] = tuple(value) if isinstance(value, list) else value
    pretrained_cfg['label_names'] = list(label_names)
    pretrained_cfg['num_classes'] = len(label_names)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg
