"""The run's data: the training view (long-tailed if the preset asks), the validation and the test
split (:func:`load_data`), and the data set a stage trains on (:func:`_training_view`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..config import ConfigError, TrainConfig, parse_config
from ..data.batch_augment import BatchCropFlip, DecodedImages
from ..data.hf import (DECODE_ERRORS, DataError, ImageClassificationView, SplitNotFound, as_image_column,
                       build_train_transform, dataset_from_split_list, encode_labels, find_undecodable_row, image_error,
                       is_single_split, label_names as dataset_label_names, labels_of, load_split, resolve_columns)
from ..data.encoding import image_encoding
from ..data.longtail import class_counts as count_classes, longtail_view, split_sha256, stratified_holdout

__all__ = ['TrainData', 'load_data', 'DECODE_CHECK_PIXELS']

logger = logging.getLogger('mislas_timm.train')  # one training log (OUT/train.log) for the whole package


@dataclass
class TrainData:
    train: Any
    test: Any
    image_column: str
    label_column: str
    num_classes: int
    label_names: List[str]
    class_counts: List[int]
    train_labels: List[int]
    meta: Dict[str, Any] = field(default_factory=dict)
    val: Any = None                     # the validation split (never the test split), or None


def _load_raw_splits(cfg: TrainConfig):
    """(training split, test split); the test split is None when the data set has none and
    ``dataset.test_fraction`` asks for a held-out one instead."""
    d = cfg.dataset
    if d.train_list or d.test_list:
        if not (d.train_list and d.test_list and d.data_root):
            raise DataError('split lists need all of --data-root, --train-list and --test-list')
        return (dataset_from_split_list(d.data_root, d.train_list),
                dataset_from_split_list(d.data_root, d.test_list))
    if not d.source:
        raise DataError(f'preset {cfg.preset!r} has no default data set: pass --dataset, or '
                        '--data-root with --train-list / --test-list')
    train = load_split(d.source, d.train_split)
    # A saved single Dataset answers every split name with itself: never test on the training images.
    missing = None
    if is_single_split(d.source):
        missing = SplitNotFound(d.source, d.test_split, [d.train_split])
    else:
        try:
            return train, load_split(d.source, d.test_split)
        except SplitNotFound as err:
            missing = err
    if not d.test_fraction:
        raise DataError(f'{missing}, or set dataset.test_fraction (e.g. 0.2) to hold out a test split of the '
                        'training split')
    return train, None


def _no_empty_class(labels: List[int], names: List[str], where: str) -> List[int]:
    """The class counts of a training split; a class without images is a DataError naming it."""
    try:
        counts = count_classes(labels, len(names))
    except ValueError as err:
        raise DataError(f'{where}: {err}; class indices must be 0..K-1') from None
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        shown = ', '.join(f'{names[c]!r} (label {c})' for c in empty[:5]) + (', ...' if len(empty) > 5 else '')
        raise DataError(f'{where} has no images of class{"es" if len(empty) > 1 else ""} {shown}: every class needs '
                        'training images; add some, or relabel the data without that class')
    return counts


def load_data(cfg: TrainConfig, max_train_samples: Optional[int] = None,
              max_eval_samples: Optional[int] = None) -> TrainData:
    """The training view (long-tailed if the preset asks), the validation and the test split.

    Labels may be ClassLabel, int or class-name strings (class names: the sorted unique strings of
    the training split; the other splits are mapped with them). Data without a test split gets a
    stratified one held out of its training split (``dataset.test_fraction``); without a long-tail
    view, ``dataset.val_per_class`` holds out the validation split. Every recorded checksum
    (split_sha256, val_sha256, test_sha256) indexes the training split as loaded."""
    cfg = parse_config(cfg)
    d = cfg.dataset
    lt = cfg.longtail
    if lt and d.val_per_class:
        raise ConfigError('dataset.val_per_class is for data used as it is; with a long-tail view (the longtail '
                          f'section) set dataset.val_per_class=null and longtail.val_per_class={d.val_per_class}')
    where = str(d.source or d.train_list)
    train, test = _load_raw_splits(cfg)
    image_column, label_column = resolve_columns(train, d.image_column, d.label_column)
    if test is not None:
        resolve_columns(test, image_column, label_column)
    train = as_image_column(train, image_column)
    names = dataset_label_names(train, label_column)
    named = names is not None  # class names from the data (ClassLabel or strings): other splits map by name
    if named:
        train = encode_labels(train, label_column, names, f'the training split of {where}')
    labels = labels_of(train, label_column)
    if not labels:
        raise DataError(f'the training split of {where} has no images; pass a data set with training images')
    num_classes = len(names) if names else max(labels) + 1
    expected = d.num_classes
    if expected and num_classes != expected:
        raise DataError(f'the data set has {num_classes} classes in column {label_column!r} but preset '
                        f'{cfg.preset!r} expects {expected}; pass the matching --dataset / --label-column '
                        f'or --set dataset.num_classes={num_classes}')
    names = names or [str(i) for i in range(num_classes)]
    _no_empty_class(labels, names, f'the training split of {where}')
    meta: Dict[str, Any] = {'imb_factor': None, 'data_seed': None, 'profile': None}
    base = np.arange(len(labels))  # the rows the views below draw from: the training split less a held-out test
    if test is None:
        base, held = stratified_holdout(labels, num_classes, d.test_fraction)
        test = train.select(held.tolist())
        meta.update(test_source=f'held out of the training split (stratified, test_fraction {d.test_fraction:g})',
                    test_fraction=d.test_fraction, test_sha256=split_sha256(held),
                    test_counts=count_classes([labels[i] for i in held.tolist()], num_classes))
        logger.info('data: %s has no %r split: held out %d of its %d training images as the test split (a '
                    'stratified %g of each class, dataset.test_fraction), sha256 %s', where, d.test_split, len(held),
                    len(labels), d.test_fraction, meta['test_sha256'])
    else:
        test = as_image_column(test, image_column)
        if named:
            test = encode_labels(test, label_column, names, f'the test split of {where}')
    view_labels = [labels[i] for i in base.tolist()]
    val = None
    val_idx = None
    if lt:
        # The long-tail view and its validation images (from the images the view leaves out; the head
        # class, which keeps all of its images, gives up some of its kept ones).
        try:
            kept, val_idx = longtail_view(view_labels, num_classes, lt.imb_factor, lt.profile, lt.data_seed, lt.n_max,
                                          lt.val_per_class)
        except ValueError as err:
            raise DataError(f'long-tail view of {d.source or d.train_list}: {err}') from None
        imb = int(lt.imb_factor) if float(lt.imb_factor).is_integer() else lt.imb_factor
        meta.update(imb_factor=imb, data_seed=lt.data_seed, profile=lt.profile, n_max=lt.n_max)
        val_per_class = lt.val_per_class
    elif d.val_per_class and not (d.val_list or d.val_split):
        # The data as it is: val_per_class images of each class held out (a class short of images keeps one).
        kept, val_idx = longtail_view(view_labels, num_classes, None, val_per_class=d.val_per_class)
        val_per_class = d.val_per_class
    else:
        kept = np.arange(len(view_labels))
        if d.val_per_class:
            logger.info('validation: the data\'s own %s (dataset.val_per_class not used)',
                        f'split {d.val_split}' if d.val_split else f'list {d.val_list}')
    kept = base[kept]
    if val_idx is not None and len(val_idx):
        val_idx = base[val_idx]
        val = train.select(val_idx.tolist())
        val_counts = count_classes([labels[i] for i in val_idx.tolist()], num_classes)
        meta.update(val_per_class=val_per_class, val_sha256=split_sha256(val_idx), val_counts=val_counts,
                    val_source='held out of the training split')
        short = [names[c] for c, n in enumerate(val_counts) if n < val_per_class]
        if short:
            logger.info('validation: %d images per class held out of training; %d class(es) with fewer images (%s) '
                        'keep one for training', val_per_class, len(short), ', '.join(short[:5]))
    if val is None and d.val_list:
        if not d.data_root:
            raise DataError('--val-list needs --data-root (the folder its image paths are relative to)')
        val = dataset_from_split_list(d.data_root, d.val_list)
        meta.update(val_source=str(d.val_list))
    elif val is None and d.val_split:
        val = as_image_column(load_split(d.source, d.val_split), image_column)
        if named:
            val = encode_labels(val, label_column, names, f'split {d.val_split} of {where}')
        meta.update(val_source=f'split {d.val_split}')
    if val is not None:
        meta['num_val'] = len(val)
    if max_train_samples and max_train_samples < len(kept):
        rng = np.random.RandomState(lt.data_seed if lt else 0)
        kept = np.sort(rng.permutation(kept)[:max_train_samples])
    meta['split_sha256'] = split_sha256(kept)
    train = train.select(kept.tolist()) if len(kept) != len(labels) else train
    train_labels = [labels[i] for i in kept.tolist()]
    counts = count_classes(train_labels, num_classes)
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        shown = ', '.join(repr(names[c]) for c in empty[:10])
        raise DataError(f'classes {shown} have no training images after the long-tail view / '
                        '--max-train-samples; raise --max-train-samples or lower the imbalance factor')
    if max_eval_samples and max_eval_samples < len(test):
        test = test.select(range(max_eval_samples))
    _check_images_decode(test, image_column, 'test')
    test_labels = labels_of(test, label_column)
    if test_labels and max(test_labels) >= num_classes:
        raise DataError(f'the test split has label {max(test_labels)} but the training split only {num_classes} classes')
    meta.update(class_counts=counts, rank_split=cfg.groups.rank_split,
                dataset=str(d.source or d.train_list), num_train=len(train_labels),
                image_encoding=image_encoding(train, image_column))
    return TrainData(train, test, image_column, label_column, num_classes, names, counts, train_labels, meta, val)


# Decode-check a split up front when it is this small (CIFAR's 10,000 test images: ~10 M pixels, about a
# second); a corrupt image found only at the end-of-stage evaluation would cost a whole stage.
DECODE_CHECK_PIXELS = 64 * 1024 ** 2


def _check_images_decode(ds, image_column: str, split: str) -> None:
    if not len(ds):
        return
    try:
        first = ds[0][image_column]
    except DECODE_ERRORS as err:
        raise image_error(ds, 0, image_column, err) from None
    if len(ds) * first.size[0] * first.size[1] > DECODE_CHECK_PIXELS:
        return
    try:
        for _ in ds[image_column]:
            pass
    except DECODE_ERRORS:
        found = find_undecodable_row(ds, image_column)
        if found is not None:
            raise image_error(ds, found[0], image_column, found[1]) from None
        raise


def _training_view(cfg: TrainConfig, data: TrainData, pretrained_cfg: Dict[str, Any], decode_once: bool):
    """The training data set and, with decode-once, the batch augmentation to run on the device."""
    kwargs = cfg.data.train_transform_kwargs
    in_chans = int(pretrained_cfg['input_size'][0])
    if not decode_once:
        transform = build_train_transform(cfg.data.train_transform, pretrained_cfg, **kwargs)
        return ImageClassificationView(data.train, data.image_column, data.label_column, transform, in_chans), None
    size = tuple(int(v) for v in pretrained_cfg['input_size'][1:])
    view = DecodedImages(data.train, data.image_column, data.label_column, in_chans, size=size)
    if view.resized:
        logger.info('decode-once: resized %d of %d training images to the model input %dx%d', view.resized,
                    len(view), size[1], size[0])
    return view, BatchCropFlip(pretrained_cfg['mean'], pretrained_cfg['std'], padding=int(kwargs.get('padding', 4)))
