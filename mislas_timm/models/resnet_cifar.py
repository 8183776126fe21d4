"""CIFAR ResNets (He et al. 2016, section 4.2) as a timm model family.

The 3-stage network used by the MiSLAS paper for CIFAR-LT: a 3x3 stem with 16 channels, three
stages of ``n`` basic blocks with 16 / 32 / 64 channels (depth = 6n + 2), parameter-free
"option A" shortcuts (stride-2 subsampling plus zero channel padding), global average pooling
and a linear classifier. ``resnet32_cifar`` with 10 classes has 0.46 M parameters.

Layer names follow the MiSLAS reference code (``conv1, bn1, layer1..3``, blocks with
``conv1/bn1/conv2/bn2``, classifier ``fc``) so its checkpoints map one-to-one
(see :func:`checkpoint_filter_fn`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .pretrained_tags import default_cfg_overrides

__all__ = ['CifarResNet', 'checkpoint_filter_fn']

# The reference code's normalisation constants (its std is not CIFAR's true std; converted
# checkpoints need exactly these values).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad the channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_before = extra // 2
        self.pad_after = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ZeroPadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3-stage CIFAR ResNet with ``blocks_per_stage`` basic blocks per stage (depth 6n + 2)."""

    def __init__(
            self,
            blocks_per_stage: int = 5,
            num_classes: int = 10,
            in_chans: int = 3,
            widths: Tuple[int, int, int] = (16, 32, 64),
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
    ):
        super().__init__()
        if blocks_per_stage < 1:
            raise ValueError(f'blocks_per_stage must be >= 1, got {blocks_per_stage}')
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        widths = tuple(widths)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        in_planes = widths[0]
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=widths[0], reduction=1, module='act1')]
        for stage_idx, (planes, stride) in enumerate(zip(widths, (1, 2, 2))):
            blocks = []
            for block_idx in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if block_idx == 0 else 1))
                in_planes = planes
            self.add_module(f'layer{stage_idx + 1}', nn.Sequential(*blocks))
            self.feature_info.append(
                dict(num_chs=planes, reduction=2 ** stage_idx, module=f'layer{stage_idx + 1}'))
        self.num_features = self.head_hidden_size = in_planes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialises every conv and linear weight Kaiming-normal (fan_in).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = 'avg') -> None:
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint_sequential(stage, len(stage), x, use_reentrant=False)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: CifarResNet) -> Dict[str, torch.Tensor]:
    """Map a reference-code (or DataParallel / DDP) CIFAR ResNet state dict onto timm names.

    Strips ``module.`` prefixes and renames the reference ``linear`` classifier to ``fc``.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith('module.'):
            key = key[len('module.'):]
        if key.startswith('linear.'):
            key = 'fc.' + key[len('linear.'):]
        out[key] = value
    return out


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(
        CifarResNet, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        # crop_pct 1.0: timm's default 0.875 would resize 32 -> 36 and crop at eval time.
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR_MEAN, 'std': CIFAR_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0', **kwargs,
    }


# Published weights first (see pretrained_tags.py: an architecture's first tag is the default of its
# bare name), then the weightless 'untrained' cfg every architecture has.
default_cfgs = generate_default_cfgs({
    **{name: _cfg(**overrides) for arch in ('resnet20_cifar', 'resnet32_cifar', 'resnet44_cifar', 'resnet56_cifar',
                                            'resnet110_cifar') for name, overrides in default_cfg_overrides(arch).items()},
    'resnet20_cifar.untrained': _cfg(),
    'resnet32_cifar.untrained': _cfg(),
    'resnet44_cifar.untrained': _cfg(),
    'resnet56_cifar.untrained': _cfg(),
    'resnet110_cifar.untrained': _cfg(),
})


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 for 32x32 inputs (3 blocks per stage, 0.27 M parameters)."""
    return _create_cifar_resnet('resnet20_cifar', pretrained, **dict(dict(blocks_per_stage=3), **kwargs))


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 for 32x32 inputs (5 blocks per stage, 0.46 M parameters): the MiSLAS CIFAR-LT backbone."""
    return _create_cifar_resnet('resnet32_cifar', pretrained, **dict(dict(blocks_per_stage=5), **kwargs))


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 for 32x32 inputs (7 blocks per stage, 0.66 M parameters)."""
    return _create_cifar_resnet('resnet44_cifar', pretrained, **dict(dict(blocks_per_stage=7), **kwargs))


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 for 32x32 inputs (9 blocks per stage, 0.85 M parameters)."""
    return _create_cifar_resnet('resnet56_cifar', pretrained, **dict(dict(blocks_per_stage=9), **kwargs))


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 for 32x32 inputs (18 blocks per stage, 1.7 M parameters)."""
    return _create_cifar_resnet('resnet110_cifar', pretrained, **dict(dict(blocks_per_stage=18), **kwargs))
