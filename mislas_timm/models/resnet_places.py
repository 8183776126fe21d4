"""ResNet-152 with the extra bottleneck block the MiSLAS reference uses for Places-LT.

The reference fine-tunes an ImageNet ResNet-152 on Places-LT with one additional torchvision
``Bottleneck(2048, 512)`` (no downsample) applied to the layer4 feature map, before global average
pooling and the linear classifier. :class:`ResNetPlaces` is timm's :class:`~timm.models.ResNet` with
that block stored as ``extra_block``, so a converted state dict reads ``conv1.*, bn1.*, layer1..4.*,
extra_block.*, fc.*`` and the usual timm API (``forward_features``, ``forward_head``,
``get_classifier``, ``reset_classifier``, ``pretrained_cfg``) works unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.resnet import Bottleneck, ResNet

__all__ = ['ResNetPlaces']


class ResNetPlaces(ResNet):
    """timm ResNet whose features pass through one more ``Bottleneck`` (``extra_block``) after layer4."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        norm_layer = get_norm_layer(kwargs.get('norm_layer', nn.BatchNorm2d))
        act_layer = get_act_layer(kwargs.get('act_layer', nn.ReLU))
        self.extra_block = Bottleneck(self.num_features, self.num_features // Bottleneck.expansion,
                                      act_layer=act_layer, norm_layer=norm_layer,
                                      device=kwargs.get('device'), dtype=kwargs.get('dtype'))
        for m in self.extra_block.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if kwargs.get('zero_init_last', True):
            self.extra_block.zero_init_last()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extra_block(super().forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """As :meth:`ResNet.forward_intermediates`; the final features include ``extra_block``."""
        out = super().forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
        if intermediates_only:
            return out
        x, intermediates = out
        _, max_index = feature_take_indices(5, indices)
        if not stop_early or max_index >= 4:
            x = self.extra_block(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if max(take_indices) < 4:
            self.extra_block = nn.Identity()
        return take_indices


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 365, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0', **kwargs,
    }


default_cfgs = generate_default_cfgs({'resnet152_places.untrained': _cfg()})


@register_model
def resnet152_places(pretrained: bool = False, **kwargs: Any) -> ResNetPlaces:
    """ResNet-152 plus the reference's extra Places-LT bottleneck block (2048 -> 512 -> 2048)."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return build_model_with_cfg(ResNetPlaces, 'resnet152_places', pretrained, **dict(model_args, **kwargs))
