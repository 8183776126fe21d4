"""Convert checkpoints of the MiSLAS reference code (``*.pth.tar``) into Hub folders.

Usage::

    python -m mislas_timm.convert CKPT OUT_DIR --arch resnet32_cifar --num-classes 10 \\
        [--label-names airplane,automobile,...] [--mean M M M --std S S S] [--overwrite]

The reference code saves one dict per checkpoint:

``state_dict_model``
    The backbone without classifier. CIFAR: ``conv1, bn1, layer1..3`` (basic blocks with
    ``conv1/bn1/conv2/bn2``; a ``linear`` head, if present, is unused). ImageNet-LT / iNaturalist
    (ResNet-50) and Places-LT (ResNet-152): torchvision names ``conv1, bn1, layer1..4`` (an ``fc``
    head, if present, is unused). These names are exactly timm's, so keys map one to one.
``state_dict_classifier``
    The linear classifier, ``fc.weight`` (K, F) and ``fc.bias`` (K,).
``state_dict_lws_model`` (stage 2 only)
    Learnable weight scaling, ``learned_norm`` (1, K): logits = learned_norm * fc(features).
    It is folded into the classifier (W' = s[:, None] W, b' = s b), so the converted model's
    logits equal the reference's.
``state_dict_block`` (Places-LT only)
    An extra torchvision ``Bottleneck(2048, 512)`` run on the layer4 feature map before pooling;
    it becomes ``extra_block`` of the ``resnet152_places`` architecture.
``epoch`` (int), ``best_acc1`` (tensor, percent), ``its_ece`` (NumPy float64, percent)
    Recorded in config.json's ``mislas`` block as ``source_epoch``, ``source_best_acc1``, ``source_ece``.

Any of the state dicts may carry the ``module.`` prefix of DataParallel / DistributedDataParallel.
Checkpoints are unpickled with ``torch.load(weights_only=True)`` allowing only tensors, containers and
NumPy float64 scalars; a file holding anything else is refused rather than executed.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    'ConversionError', 'load_reference_checkpoint', 'reference_state_dict', 'convert_checkpoint',
    'convert_to_hub_folder', 'main',
]

PathLike = Union[str, Path]
StateDict = Dict[str, torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCH_HINT = ('resnet32_cifar for CIFAR-LT, resnet50 for ImageNet-LT / iNaturalist 2018, '
             'resnet152_places for Places-LT')


# What torch's weights-only unpickler says when a pickle names a global / builds a type not allowed.
_UNSAFE_OBJECT = re.compile(r'GLOBAL|Can only build|allowlist', re.IGNORECASE)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says what is wrong and how to fix it."""


def _numpy_safe_globals() -> List[Any]:
    """The globals a pickled NumPy float64 scalar needs (numpy 1.x and 2.x module names)."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return [
        (scalar, 'numpy.core.multiarray.scalar'),
        (scalar, 'numpy._core.multiarray.scalar'),
        (np.dtype, 'numpy.dtype'),
        type(np.dtype(np.float64)),  # numpy.dtypes.Float64DType, rebuilt by the pickle's BUILD
    ]


def load_reference_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Safely load a reference ``.pth.tar`` and check its layout; return the checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f'{path}: no such file; pass the path of a reference .pth.tar checkpoint')
    if not hasattr(torch.serialization, 'safe_globals'):
        raise ConversionError(f'torch {torch.__version__} cannot load checkpoints safely; install torch >= 2.5')
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).split('WeightsUnpickler error:')[-1].strip().splitlines()[0].split('. Please')[0]
        if not _UNSAFE_OBJECT.search(detail):
            raise ConversionError(f'{path.name} is not a readable PyTorch checkpoint ({detail}); '
                                  'check the file is complete') from None
        raise ConversionError(
            f'{path.name} holds objects other than tensors and NumPy scalars ({detail}); it will not be '
            'unpickled. Re-save it with only the state dicts, epoch, best_acc1 and its_ece') from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ConversionError(f'{path.name} is not a readable PyTorch checkpoint ({err}); '
                              'check the file is complete') from None
    _check_layout(checkpoint, path.name)
    return checkpoint


def _check_layout(checkpoint: Any, name: str) -> None:
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f'{name} holds a {type(checkpoint).__name__}, not a checkpoint dict; '
                              'pass a checkpoint saved by the MiSLAS reference training scripts')
    for key in ('state_dict_model', 'state_dict_classifier'):
        if not isinstance(checkpoint.get(key), Mapping):
            raise ConversionError(
                f'{name} has no {key!r} (keys: {sorted(map(str, checkpoint))}); this is not a MiSLAS reference '
                'checkpoint: pass one saved by train_stage1.py / train_stage2.py (ckpt.best.pth.tar)')


def _strip_module(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the ``module.`` prefix that DataParallel / DistributedDataParallel adds."""
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state_dict.items()}


def _classifier(checkpoint: Mapping[str, Any], num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    head = _strip_module(checkpoint['state_dict_classifier'])
    if set(head) != {'fc.weight', 'fc.bias'}:
        raise ConversionError(f'state_dict_classifier has keys {sorted(head)}, expected fc.weight and fc.bias; '
                              'pass a checkpoint of the reference Classifier (one nn.Linear named fc)')
    weight, bias = head['fc.weight'], head['fc.bias']
    if weight.ndim != 2 or weight.shape[0] != num_classes:
        raise ConversionError(f'the checkpoint classifier has {weight.shape[0]} classes but num_classes is '
                              f'{num_classes}; pass --num-classes {weight.shape[0]}')
    return weight, bias


def _lws_scale(checkpoint: Mapping[str, Any], num_classes: int) -> Optional[torch.Tensor]:
    lws = checkpoint.get('state_dict_lws_model')
    if lws is None:
        return None
    lws = _strip_module(lws)
    if set(lws) != {'learned_norm'}:
        raise ConversionError(f'state_dict_lws_model has keys {sorted(lws)}, expected learned_norm; '
                              'pass a checkpoint of the reference LearnableWeightScaling')
    scale = lws['learned_norm'].reshape(-1)
    if scale.numel() != num_classes:
        raise ConversionError(f'learned_norm has {scale.numel()} entries but num_classes is {num_classes}; '
                              f'pass --num-classes {scale.numel()}')
    return scale


def reference_state_dict(checkpoint: Mapping[str, Any], num_classes: int) -> StateDict:
    """Map a reference checkpoint onto timm names, with the LWS scale folded into ``fc``."""
    backbone = {k: v for k, v in _strip_module(checkpoint['state_dict_model']).items()
                if not k.startswith(('linear.', 'fc.'))}  # the backbone's own head is never used
    weight, bias = _classifier(checkpoint, num_classes)
    scale = _lws_scale(checkpoint, num_classes)
    if scale is not None:
        weight, bias = scale[:, None] * weight, scale * bias
    state = dict(backbone, **{'fc.weight': weight, 'fc.bias': bias})
    if checkpoint.get('state_dict_block') is not None:
        state.update({f'extra_block.{k}': v for k, v in _strip_module(checkpoint['state_dict_block']).items()})
    return state


def _check_keys(model: torch.nn.Module, state: StateDict, arch: str, has_block: bool) -> None:
    expected = model.state_dict()
    if has_block != any(k.startswith('extra_block.') for k in expected):
        wrong = 'has' if has_block else 'has no'
        raise ConversionError(f'the checkpoint {wrong} state_dict_block (the Places-LT extra block) but --arch '
                              f'{arch} {"does not" if has_block else "does"}; pass --arch '
                              f'{"resnet152_places" if has_block else "resnet152"}')
    missing = [k for k in expected if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ConversionError(
            f'the checkpoint does not match --arch {arch}: {len(missing)} missing keys {missing[:4]}, '
            f'{len(unexpected)} unexpected keys {unexpected[:4]}; pass the arch it was trained with ({ARCH_HINT})')
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(f'{key} has shape {tuple(value.shape)} in the checkpoint but '
                                  f'{tuple(expected[key].shape)} in {arch}; pass the arch it was trained with '
                                  f'({ARCH_HINT})')
    for key in expected:  # very old checkpoints lack BatchNorm's step counter; it does not affect eval
        state.setdefault(key, expected[key])


def _create_model(arch: str, num_classes: int, model_kwargs: Optional[Mapping[str, Any]]) -> torch.nn.Module:
    import timm

    from . import models  # noqa: F401  registers *_cifar and resnet152_places

    if not timm.is_model(arch):
        raise ConversionError(f'unknown --arch {arch!r}; use a timm architecture ({ARCH_HINT})')
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **dict(model_kwargs or {}))


def _apply_preprocessing(model: torch.nn.Module, arch: str, label_names: Sequence[str],
                         mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> None:
    """Record the reference's evaluation transform in ``model.pretrained_cfg`` (saved to config.json)."""
    cfg = dict(model.pretrained_cfg)
    if not arch.endswith('_cifar'):  # Resize(256) + CenterCrop(224), bilinear, ImageNet statistics
        cfg.update(input_size=(3, 224, 224), crop_pct=0.875, crop_mode='center', interpolation='bilinear',
                   mean=IMAGENET_MEAN, std=IMAGENET_STD)
        for key in ('test_input_size', 'test_crop_pct', 'test_pool_size'):
            cfg.pop(key, None)
    for key, value in (('mean', mean), ('std', std)):
        if value is not None:
            if len(value) != cfg['input_size'][0]:
                raise ConversionError(f'--{key} needs {cfg["input_size"][0]} values, got {len(value)}')
            cfg[key] = tuple(float(v) for v in value)
    cfg['label_names'] = list(label_names)
    cfg['num_classes'] = len(label_names)
    model.pretrained_cfg = model.default_cfg = cfg


def _as_float(value: Any) -> Optional[float]:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def _mislas_block(checkpoint: Mapping[str, Any], source: str) -> Dict[str, Any]:
    epoch = checkpoint.get('epoch')
    return {
        'converted_from': source,
        'source_epoch': int(epoch) if epoch is not None else None,
        'source_best_acc1': _as_float(checkpoint.get('best_acc1')),
        'source_ece': _as_float(checkpoint.get('its_ece')),
        'stage': 2 if checkpoint.get('state_dict_lws_model') is not None else 1,
        'class_counts': None,
        'rank_split': None,
    }


def _label_names(label_names: Optional[Sequence[str]], num_classes: int) -> List[str]:
    if label_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(n) for n in label_names]
    if len(names) != num_classes:
        raise ConversionError(f'{len(names)} label names given for {num_classes} classes; '
                              f'pass exactly {num_classes} names (or none for 0..{num_classes - 1})')
    return names


def convert_checkpoint(
        path: PathLike,
        arch: str,
        num_classes: int,
        *,
        label_names: Optional[Sequence[str]] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
) -> torch.nn.Module:
    """Load a reference checkpoint into a timm ``arch`` model (eval mode) whose logits equal the reference's.

    The model carries ``pretrained_cfg`` (preprocessing, label names) and ``mislas_config`` (the
    ``mislas`` block for config.json: source file, epoch, best_acc1, ECE, stage). ``model_kwargs`` go
    to ``timm.create_model`` (e.g. ``layers`` of a non-standard depth) and are recorded in config.json.
    """
    if num_classes < 1:
        raise ConversionError(f'num_classes must be positive, got {num_classes}; pass the classifier\'s class count')
    names = _label_names(label_names, num_classes)
    checkpoint = load_reference_checkpoint(path)
    state = reference_state_dict(checkpoint, num_classes)
    model = _create_model(arch, num_classes, model_kwargs)
    _check_keys(model, state, arch, checkpoint.get('state_dict_block') is not None)
    model.load_state_dict(state, strict=True)
    _apply_preprocessing(model, arch, names, mean, std)
    model.mislas_config = _mislas_block(checkpoint, Path(path).name)
    return model.eval()


def convert_to_hub_folder(
        path: PathLike,
        out_dir: PathLike,
        arch: str,
        num_classes: int,
        *,
        label_names: Optional[Sequence[str]] = None,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        model_kwargs: Optional[Mapping[str, Any]] = None,
        overwrite: bool = False,
) -> Path:
    """Convert a reference checkpoint and write a Hub folder (config.json + model.safetensors) atomically."""
    from .hub import save_hub_folder

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConversionError(f'{out_dir} already exists; pass --overwrite (overwrite=True) to replace it '
                              'or choose another output folder')
    model = convert_checkpoint(path, arch, num_classes, label_names=label_names, mean=mean, std=std,
                               model_kwargs=model_kwargs)
    return save_hub_folder(model, out_dir, label_names=model.pretrained_cfg['label_names'],
                           mislas=model.mislas_config)


def _parse_label_names(value: Optional[str]) -> Optional[List[str]]:
    """``a,b,c`` or ``@FILE`` (one name per line)."""
    if value is None:
        return None
    if value.startswith('@'):
        file = Path(value[1:])
        if not file.is_file():
            raise ConversionError(f'label-name file {file} does not exist; pass @FILE with one name per line')
        return [line.strip() for line in file.read_text().splitlines() if line.strip()]
    return [name.strip() for name in value.split(',')]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m mislas_timm.convert',
        description='Convert a MiSLAS reference checkpoint (.pth.tar) into a Hub folder '
                    '(config.json + model.safetensors) loadable with mislas_timm.load_model.')
    parser.add_argument('checkpoint', help='reference checkpoint, e.g. ckpt.best.pth.tar')
    parser.add_argument('out_dir', help='Hub folder to write (must not exist unless --overwrite)')
    parser.add_argument('--arch', required=True, help=f'timm architecture: {ARCH_HINT}')
    parser.add_argument('--num-classes', type=int, required=True, help='number of classes of the classifier')
    parser.add_argument('--label-names', help='comma-separated class names, or @FILE with one per line '
                                              '(default: 0..K-1)')
    parser.add_argument('--mean', type=float, nargs=3, help='normalisation mean (default: the arch\'s)')
    parser.add_argument('--std', type=float, nargs=3, help='normalisation std (default: the arch\'s)')
    parser.add_argument('--overwrite', action='store_true', help='replace OUT_DIR if it exists')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        folder = convert_to_hub_folder(
            args.checkpoint, args.out_dir, args.arch, args.num_classes,
            label_names=_parse_label_names(args.label_names), mean=args.mean, std=args.std,
            overwrite=args.overwrite)
    except ConversionError as err:
        print(f'mislas_timm.convert: error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {folder} ({os.path.basename(args.checkpoint)} -> {args.arch}, {args.num_classes} classes)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
