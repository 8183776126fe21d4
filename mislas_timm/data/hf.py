"""Hugging Face ``datasets`` adapters: loading any source, picking columns, torch views, transforms.

Sources: a Hub id (``uoft-cs/cifar10``), a local folder of parquet files, a ``save_to_disk``
folder, an image folder (``class_name/image.png``), or a split list of image paths and labels
(ImageNet-LT / iNaturalist / Places-LT ``*.txt`` files: ``relative/path.jpg label`` per line).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms as T

__all__ = [
    'DataError', 'load_split', 'dataset_from_split_list', 'resolve_columns', 'label_names',
    'labels_of', 'ImageClassificationView', 'TRAIN_TRANSFORMS', 'build_train_transform',
    'build_eval_transform', 'to_model_mode',
]

IMAGE_COLUMNS = ('img', 'image', 'pixel_values', 'jpg', 'png')
LABEL_COLUMNS = ('label', 'labels', 'fine_label', 'cls', 'class', 'target')


class DataError(ValueError):
    """A data set problem with a one-line message that names the fix."""


def _is_save_to_disk(path: Path) -> bool:
    return (path / 'dataset_dict.json').exists() or (path / 'state.json').exists()


def load_split(source: str, split: str):
    """One split of a data set as a ``datasets.Dataset``; see the module docstring for sources."""
    import datasets

    path = Path(os.path.expanduser(source))
    try:
        if path.is_dir() and _is_save_to_disk(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f'split {split!r} not in {source} (has {sorted(loaded)}); pass --split / the preset\'s split names')
                return loaded[split]
            return loaded
        if path.exists():
            if not path.is_dir():
                raise DataError(f'{source} is a file; pass a data set folder (parquet files, save_to_disk or image folder) or a Hub id')
            return datasets.load_dataset(str(path), split=split)
        if source.count('/') > 1 or source.startswith(('.', '/', '~')):
            raise DataError(f'data set folder {source} does not exist; check the path')
        return datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except ValueError as err:
        if 'split' in str(err).lower() or 'Unknown split' in str(err):
            raise DataError(f'split {split!r} not found in {source}: {err}') from None
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types for an unreachable Hub
        if not path.exists() and _looks_offline(err):
            raise DataError(
                f'cannot reach the Hugging Face Hub to load {source!r} ({type(err).__name__}); '
                'download it elsewhere and pass the local folder instead, e.g. --dataset ./cifar10') from None
        if not path.exists():
            raise DataError(f'unknown data set {source!r}: not a local folder and not loadable from the Hub '
                            f'({type(err).__name__}: {err})') from None
        raise


def _looks_offline(err: Exception) -> bool:
    text = f'{type(err).__name__} {err}'.lower()
    return any(word in text for word in ('connect', 'offline', 'resolve', 'network', 'timed out', 'unreachable', 'couldn\'t reach', 'max retries'))


def dataset_from_split_list(data_root: str, list_file: str):
    """A ``datasets.Dataset`` (columns ``image``, ``label``) from a split list of ``path label`` lines."""
    import datasets

    root = Path(data_root)
    if not Path(list_file).is_file():
        raise DataError(f'split list {list_file} not found; see README.md (large data sets) for where to get it')
    paths: List[str] = []
    labels: List[int] = []
    with open(list_file) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                raise DataError(f'{list_file}:{line_no}: expected "relative/path.jpg LABEL", got {line.strip()!r}')
            paths.append(str(root / parts[0]))
            labels.append(int(parts[1]))
    missing = [p for p in paths[:20] if not Path(p).exists()]
    if missing:
        raise DataError(f'images of {list_file} not found under --data-root {data_root} (e.g. {missing[0]}); '
                        'pass the folder the list paths are relative to')
    num_classes = max(labels) + 1
    features = datasets.Features({
        'image': datasets.Image(),
        'label': datasets.ClassLabel(names=[str(i) for i in range(num_classes)]),
    })
    return datasets.Dataset.from_dict({'image': paths, 'label': labels}, features=features)


def resolve_columns(ds, image_column: Optional[str] = None, label_column: Optional[str] = None) -> Tuple[str, str]:
    """The image and label column names: the given ones (checked) or the first known name present."""
    columns = list(ds.column_names)

    def pick(given: Optional[str], candidates: Sequence[str], what: str, flag: str) -> str:
        if given is not None:
            if given not in columns:
                raise DataError(f'{what} column {given!r} not in the data set (columns: {columns}); pass {flag}')
            return given
        for name in candidates:
            if name in columns:
                return name
        raise DataError(f'no {what} column found (columns: {columns}); pass {flag} NAME')

    return (pick(image_column, IMAGE_COLUMNS, 'image', '--image-column'),
            pick(label_column, LABEL_COLUMNS, 'label', '--label-column'))


def label_names(ds, label_column: str) -> Optional[List[str]]:
    """Class names from a ``ClassLabel`` column, else None."""
    feature = ds.features.get(label_column)
    names = getattr(feature, 'names', None)
    return list(names) if names else None


def labels_of(ds, label_column: str) -> List[int]:
    return [int(v) for v in ds[label_column]]


def to_model_mode(image: Image.Image, in_chans: int = 3) -> Image.Image:
    """Grayscale, RGBA, palette and CMYK images converted to the model's channels (RGB or L)."""
    mode = 'RGB' if in_chans == 3 else 'L'
    if image.mode == mode:
        return image
    if image.mode in ('RGBA', 'LA', 'P', 'PA') and mode == 'RGB':
        # Composite transparency on white instead of letting it turn black.
        rgba = image.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert('RGB')
    return image.convert(mode)


class ImageClassificationView(TorchDataset):
    """A torch view of a HF data set: (transformed image tensor, label)."""

    def __init__(self, ds, image_column: str, label_column: str, transform: Callable, in_chans: int = 3):
        self.ds = ds
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        row = self.ds[int(index)]
        image = row[self.image_column]
        if not isinstance(image, Image.Image):
            raise DataError(f'column {self.image_column!r} does not hold images (got {type(image).__name__}); '
                            'pass --image-column')
        return self.transform(to_model_mode(image, self.in_chans)), int(row[self.label_column])


def _cifar_train(input_size: int, mean, std, padding: int = 4, **_) -> Callable:
    """Reference CIFAR augmentation: 4-pixel-padded random crop + horizontal flip."""
    return T.Compose([T.RandomCrop(input_size, padding=padding), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(mean, std)])


def _imagenet_train(input_size: int, mean, std, color_jitter: float = 0.4, **_) -> Callable:
    """Reference large-set augmentation: random resized crop, flip, colour jitter."""
    ops = [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()]
    if color_jitter:
        ops.append(T.ColorJitter(color_jitter, color_jitter, color_jitter, 0))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


# Presets name their training augmentation; this table maps names to builders.
TRAIN_TRANSFORMS: Dict[str, Callable[..., Callable]] = {'cifar': _cifar_train, 'imagenet': _imagenet_train}


def build_train_transform(name: str, data_config: Dict, **kwargs) -> Callable:
    if name not in TRAIN_TRANSFORMS:
        raise DataError(f'unknown train transform {name!r}; choose one of {sorted(TRAIN_TRANSFORMS)}')
    return TRAIN_TRANSFORMS[name](data_config['input_size'][-1], data_config['mean'], data_config['std'], **kwargs)


def build_eval_transform(model: torch.nn.Module) -> Callable:
    """The model's own eval preprocessing (size, crop_pct, interpolation, mean, std) via timm."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    return create_transform(**config, is_training=False)
