"""Two-stage MiSLAS training with Accelerate (the logic behind ``train.py``).

Stage 1: instance-balanced sampling, cross-entropy with mixup. Stage 2: ``to_stage2`` (frozen
backbone, MiSLAS / LWS / cRT head, optional shift-BN), class-balanced sampling, label-aware
smoothing, classifier at ``lr * lr_factor``; each epoch is ceil(N / batch) + 1 steps as in the
reference loop. Models are never selected on the test set: each stage reports its last epoch.

Run folder: ``OUT/stage1/`` and ``OUT/stage2/`` (Hub folders), ``OUT/checkpoints/`` (one
complete Accelerate state per stage, written to a temporary folder and renamed), ``OUT/train.log``.
The per-epoch randomness (sampler order, augmentation, mixup) is seeded by (seed, stage, epoch,
rank), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import ConfigError, StageConfig, TrainConfig, parse_config
from .data.batch_augment import BatchCropFlip, DecodedImages, resolve_decode_once
from .data.hf import (DECODE_ERRORS, DataError, ImageClassificationView, SplitNotFound, as_image_column,
                      build_train_transform, dataset_from_split_list, encode_labels, find_undecodable_row, image_error,
                      is_single_split, label_names as dataset_label_names, labels_of, load_split, resolve_columns)
from .data.encoding import image_encoding
from .data.longtail import class_counts as count_classes, longtail_view, split_sha256, stratified_holdout
from .data.sampler import ClassAwareSampler, InstanceSampler, worker_generator
from .evaluation import evaluate
from .hub import save_hub_folder, write_json_atomic
from .initialization import load_init_weights, load_source, resolve_start
from .losses import BalancedSoftmaxCrossEntropy, LabelAwareSmoothing, mixup_batch, mixup_cross_entropy
from .precise_bn import precise_bn_batches, recompute_bn_stats, tracking_bn_layers
from .runtime import (RuntimeChoices, device_name, has_accelerator, load_pinned, precision_problem,
                      resolve_channels_last, resolve_mixed_precision, save_pinned)
from .stage2 import fold_head, head_parameter_groups, to_stage2
from .stage2_selection import check_validation, recorded_recipe, select_smoothing, stage_checkpoints

__all__ = ['TrainingError', 'TrainData', 'load_data', 'build_model', 'lr_multiplier', 'loss_problem', 'run_training',
           'StageProgress']

logger = logging.getLogger('mislas_timm.train')


class TrainingError(RuntimeError):
    """A training run stopped for a reason the user can act on (message names it)."""


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


def _check_arch(arch: Optional[str]) -> None:
    import timm

    if arch is None:
        raise ConfigError('config key model.arch is null: pass --init SOURCE or --model ARCH')
    if not timm.is_model(arch):
        raise ConfigError(f'config key model.arch: unknown model {arch!r}; pass a timm model name '
                          '(see timm.list_models())')


def _apply_data_cfg(model: torch.nn.Module, cfg: TrainConfig, label_names: List[str]) -> None:
    pretrained_cfg = dict(model.pretrained_cfg)
    for key in ('input_size', 'mean', 'std', 'crop_pct'):
        value = getattr(cfg.data, key)
        if value is not None:
            pretrained_cfg[key] = tuple(value) if isinstance(value, list) else value
    pretrained_cfg['label_names'] = list(label_names)
    pretrained_cfg['num_classes'] = len(label_names)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg


def lr_multiplier(epoch: int, stage_cfg: StageConfig) -> float:
    """Learning-rate factor of an epoch (0-based), per epoch as the reference.

    Linear warm-up: (epoch + 1) / warmup_epochs for epoch < warmup_epochs. Then
    ``step``: gamma ** (number of milestones m with epoch + 1 > m);
    ``cosine``: 0.5 * (1 + cos(pi * (epoch - warmup_epochs) / (epochs - warmup_epochs))).
    """
    warmup = stage_cfg.warmup_epochs
    if epoch < warmup:
        return (epoch + 1) / warmup
    schedule = stage_cfg.schedule
    if schedule == 'step':
        passed = sum(1 for m in stage_cfg.milestones or [] if epoch + 1 > m)
        return stage_cfg.gamma ** passed
    if schedule == 'cosine':
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(stage_cfg.epochs - warmup, 1)))
    raise ConfigError(f'unknown schedule {schedule!r}; use step or cosine')


def _read_progress(folder: Path) -> Optional[Dict[str, Any]]:
    """A checkpoint folder's progress.json, or None. It is written last, so a folder that has one
    holds a complete state."""
    done = folder / 'progress.json'
    return json.loads(done.read_text()) if done.is_file() else None


def _checkpoint_epoch(folder: Path) -> Optional[int]:
    """The epoch a checkpoint folder completed, or None for an incomplete one."""
    progress = _read_progress(folder)
    return None if progress is None else int(progress['epoch'])


def _checkpoint_folders(root: Path, stage: str) -> List[Path]:
    """Where a stage's state can be: in place, or half-way through the rotation of :meth:`Checkpointer.save`."""
    return [root / stage, root / f'.{stage}.tmp', root / f'.{stage}.old']


def checkpoint_exists(root: Path, stage: str) -> bool:
    """Whether ``root`` holds a state of ``stage``, also one a crash left half-way through its rotation."""
    path, *rotating = _checkpoint_folders(root, stage)
    return path.exists() or any(_checkpoint_epoch(f) is not None for f in rotating)


def _newest_complete(root: Path, stage: str) -> Optional[Path]:
    """The folder holding the newest complete state of ``stage`` (in place or mid-rotation), or None."""
    complete = [(epoch, f) for f in _checkpoint_folders(root, stage) if (epoch := _checkpoint_epoch(f)) is not None]
    return max(complete, key=lambda item: item[0])[1] if complete else None


def _newest_progress(root: Path, stage: str) -> Optional[Dict[str, Any]]:
    """progress.json of the newest complete state of ``stage`` (read only)."""
    newest = _newest_complete(root, stage)
    return None if newest is None else _read_progress(newest)


# What a resume may change: where the data lives (it moves with the machine), how the work runs
# (runtime: checked by check_resumable), what only evaluation or the card reads, and a stage's lr
# (lowered to get past a divergence). Everything else must be what the checkpoint was trained with.
_RESUME_MAY_CHANGE = ('runtime.', 'dataset.source', 'dataset.data_root', 'dataset.train_list', 'dataset.test_list',
                      'dataset.val_list', 'dataset.test_split', 'data.decode_once', 'data.num_workers',
                      'data.eval_batch_size', 'data.crop_pct', 'groups.', 'description', 'preset', 'limitations')


def stage_recipe(cfg: TrainConfig, stage: str, data_meta: Dict[str, Any]) -> Dict[str, Any]:
    """The settings a checkpoint of ``stage`` (``stage1`` / ``stage2``) was trained with, flattened to
    ``section.key``: everything but the other stage's section and :data:`_RESUME_MAY_CHANGE` (so also
    the model it started from, ``model.init``, and its weights' ``model.init_sha256``), plus which
    images it trained on (the kept indices' sha256, which --max-train-samples also changes, and the
    image encoding)."""
    other = 'stage2.' if stage == 'stage1' else 'stage1.'
    flat: Dict[str, Any] = {key: data_meta.get(key) for key in ('split_sha256', 'image_encoding')}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f'{prefix}{key}.', item)
        else:
            flat[prefix[:-1]] = value

    walk('', asdict(cfg))
    # The stage's lr by exact name: a prefix would also let stage2.lr_factor change.
    kept = {k: v for k, v in flat.items() if not (k == f'{stage}.lr' or k.startswith(_RESUME_MAY_CHANGE + (other,)))}
    return json.loads(json.dumps(kept, default=str))  # as progress.json gives it back: tuples are lists


def _shown(value: Any) -> str:
    """A recorded value for a one-line message (a sha256 cut to its first 12 digits)."""
    if isinstance(value, str) and len(value) == 64 and all(c in '0123456789abcdef' for c in value):
        return repr(value[:12] + '...')
    return repr(value)


def _recipe_differences(saved: Optional[Dict[str, Any]], current: Dict[str, Any]) -> List[str]:
    """The keys whose recorded value differs from the asked one: the configuration's first, then which
    images / weights it trained on. Only what was recorded: a key older code did not record is not compared."""
    changed = [k for k in (saved or {}) if saved[k] != current.get(k)]
    return sorted(changed, key=lambda k: ('.' not in k or k.endswith('sha256'), k))


def _differences_message(found: List[tuple]) -> str:
    """One line from (stage, verb, key, asked, recorded) tuples."""
    shown = [f'{key} is {_shown(asked)} but {stage} was {verb} with {_shown(recorded)}'
             for stage, verb, key, asked, recorded in found[:6]]
    if len(found) > 6:
        shown.append(f'and {len(found) - 6} more ({", ".join(item[2] for item in found[6:])})')
    return (f'--resume: {"; ".join(shown)}; resume with the settings the run started with, or start a new '
            '--output-dir')


def check_same_recipe(saved: Optional[Dict[str, Any]], current: Dict[str, Any], stage: str,
                      verb: str = 'checkpointed') -> None:
    """Refuse a resume whose settings differ from those its checkpoint was trained with (each differing
    key with both values, in one line)."""
    changed = _recipe_differences(saved, current)
    if changed:
        raise ConfigError(_differences_message([(stage, verb, k, current.get(k), saved[k]) for k in changed]))


# A finished stage's config.json (``mislas`` block) in stage_recipe's keys: what a run folder whose
# checkpoints were deleted still tells about how its stages were trained.
_CARD_RECIPE_KEYS = {'split_sha256': 'split_sha256', 'image_encoding': 'image_encoding', 'seed': 'seed',
                     'imb_factor': 'longtail.imb_factor', 'data_seed': 'longtail.data_seed',
                     'profile': 'longtail.profile', 'n_max': 'longtail.n_max'}


def _finished_stage_recipe(folder: Path, stage: str, current: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The recorded settings of the finished stage in ``folder`` that ``current`` has keys for."""
    try:
        config = json.loads((folder / 'config.json').read_text())
    except (OSError, ValueError):
        return None
    mislas = config.get('mislas') or {}
    saved = {new: mislas[old] for old, new in _CARD_RECIPE_KEYS.items() if old in mislas}
    if config.get('architecture'):
        saved['model.arch'] = config['architecture']
    saved.update({f'{stage}.{key}': value for key, value in (mislas.get('recipe') or {}).items()})
    saved = recorded_recipe(mislas, saved)  # a chosen smoothing: the candidates were the setting
    return {k: v for k, v in saved.items() if k in current}


def check_resume_settings(cfg: TrainConfig, data_meta: Dict[str, Any], out: Path, stages: Sequence[str]) -> None:
    """``--resume``: before any work, refuse settings other than those each stage already in ``out`` was
    trained with, finished (then it would be reported as done, or built on) or checkpointed (then it
    would continue under another recipe). One line naming every differing key with both values.

    A ``--stage 2`` run on ``OUT/stage1`` (no ``model.init``) also holds that stage 1 to these settings:
    an IF50 stage 2 must not be trained on an IF100 stage 1."""
    wanted = [f'stage{s}' for s in stages]
    if wanted == ['stage2'] and not cfg.model.init:
        wanted.insert(0, 'stage1')
    found: List[tuple] = []
    for stage in wanted:
        current = stage_recipe(cfg, stage, data_meta)
        finished = _stage_done(out / stage)
        saved = (_newest_progress(out / 'checkpoints', stage) or {}).get('recipe')
        if saved is None and finished:
            saved = _finished_stage_recipe(out / stage, stage, current)
        reported = {item[2] for item in found}
        found += [(stage, 'trained' if finished else 'checkpointed', k, current.get(k), saved[k])
                  for k in _recipe_differences(saved, current) if k not in reported]
    if found:
        raise ConfigError(_differences_message(found))


def recover_checkpoint(root: Path, stage: str) -> Optional[Path]:
    """Put the newest complete state of ``stage`` in place and drop the other copies.

    A process killed inside :meth:`Checkpointer.save` can leave the newest complete state in
    ``.stage.tmp`` (with no ``stage`` folder at all) or a stale ``.stage.old``, which would make the
    next rotation fail; the newest complete copy wins, so no finished epoch is lost."""
    newest = _newest_complete(root, stage)
    if newest is None:
        return None
    path, *rotating = _checkpoint_folders(root, stage)
    if newest != path:
        if path.exists():
            shutil.rmtree(path)
        os.replace(newest, path)
    for stale in rotating:
        if stale.exists():
            shutil.rmtree(stale)
    return path


def _pinned_differs(pinned: Optional[Dict[str, Any]], choices: RuntimeChoices) -> bool:
    """Whether the pinned choices are missing or differ from ``choices`` (the reason text aside)."""
    current = {k: v for k, v in choices.to_dict().items() if k != 'reason'}
    return pinned is None or {k: v for k, v in pinned.items() if k != 'reason'} != current


class Checkpointer:
    """One complete Accelerate state per stage under OUT/checkpoints, replaced atomically each epoch."""

    def __init__(self, root: Path, stage: str, accelerator, choices: Optional[RuntimeChoices] = None,
                 recipe: Optional[Dict[str, Any]] = None):
        self.root = root
        self.stage = stage
        self.accelerator = accelerator
        self.choices = choices
        self.recipe = recipe
        self.start_loss: Optional[float] = None  # the stage's first loss: what divergence is judged against

    @property
    def path(self) -> Path:
        return self.root / self.stage

    def latest_epoch(self) -> Optional[int]:
        return _checkpoint_epoch(self.path)

    def train_time_s(self) -> float:
        """Seconds spent training this stage up to its last checkpoint, summed over resumes."""
        progress = _read_progress(self.path)
        return float((progress or {}).get('train_time_s', 0.0))

    def recorded_start_loss(self) -> Optional[float]:
        """The stage's first loss as its last checkpoint recorded it (None for older checkpoints)."""
        value = (_read_progress(self.path) or {}).get('start_loss')
        return None if value is None else float(value)

    def save(self, epoch: int, train_time_s: float = 0.0) -> None:
        acc = self.accelerator
        path, tmp, old = _checkpoint_folders(self.root, self.stage)
        if acc.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json_atomic(tmp / 'progress.json', {'stage': self.stage, 'epoch': epoch,
                                                      'train_time_s': train_time_s, 'recipe': self.recipe,
                                                      'start_loss': self.start_loss})
            pinned = self.root / 'runtime.json'
            if self.choices is not None and _pinned_differs(load_pinned(pinned), self.choices):
                # Pinned with the checkpoint (a run that failed before one left no state to resume),
                # and re-pinned when a later stage or resume resolved other choices: a resume
                # continues the newest checkpoint, so it must find that one's choices.
                save_pinned(pinned, self.choices)
            if old.exists():  # left by a process killed while deleting it
                shutil.rmtree(old)
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            if old.exists():
                shutil.rmtree(old)
        acc.wait_for_everyone()

    def restore(self) -> int:
        """Load the last complete state; return the first epoch still to run."""
        if self.accelerator.is_main_process:
            recover_checkpoint(self.root, self.stage)
        self.accelerator.wait_for_everyone()
        epoch = self.latest_epoch()
        if epoch is None:
            return 0
        self.accelerator.load_state(str(self.path))
        return epoch + 1


# A finite loss above this many times its stage's reference has diverged. The reference is the larger of
# log K (the cross-entropy of a uniform guess) and the stage's own first loss: the losses trained here (CE,
# mixup CE, Balanced Softmax, LAS) start near log K and fall, a healthy run stays within a few times
# its start, a diverging one runs to 1e3..1e10 within a few steps.
DIVERGENCE_FACTOR = 50.0
# A stage whose very first loss is above this many times log K starts from a broken model (for stage 2:
# its stage-1 model; a 6-step stage 1 evaluated with unsettled BN statistics started stage 2 at 45 x log K),
# which is reported as such, before any step, instead of as a divergence of the stage itself.
BAD_START_FACTOR = 10.0


def loss_problem(loss: float, num_classes: int, start_loss: Optional[float] = None) -> Optional[str]:
    """Why a step's loss must stop the run (NaN / inf, or > DIVERGENCE_FACTOR x the larger of log K and
    the stage's first loss ``start_loss``), else None."""
    if not math.isfinite(loss):
        return f'loss is {loss}'
    log_k = math.log(max(num_classes, 2))
    if start_loss is not None and math.isfinite(start_loss) and start_loss > log_k:
        limit = DIVERGENCE_FACTOR * start_loss
        what = f"{DIVERGENCE_FACTOR:g} x {start_loss:.3g}, the stage's first loss"
    else:
        limit = DIVERGENCE_FACTOR * log_k
        what = f'{DIVERGENCE_FACTOR:g} x log {num_classes}, the loss of a uniform guess'
    if loss > limit:
        return f'loss {loss:.4g} exceeds {limit:.0f} ({what}): training diverged'
    return None


def start_problem(loss: float, num_classes: int) -> Optional[str]:
    """Why a stage's first loss shows that the model it starts from is broken (> BAD_START_FACTOR x
    log K), else None."""
    log_k = math.log(max(num_classes, 2))
    if math.isfinite(loss) and loss <= BAD_START_FACTOR * log_k:
        return None
    times = f', {loss / log_k:.0f} x log {num_classes} (the loss of a uniform guess)' if math.isfinite(loss) else ''
    return f'starts at loss {loss:.4g}{times}'


def _seed_for(seed: int, *parts: int) -> int:
    return int(np.random.RandomState([seed, *parts]).randint(2 ** 31))


@dataclass
class StageSpec:
    """What differs between the two stages; the loop in :func:`_train_stage` is shared."""
    name: str
    index: int
    model: torch.nn.Module
    param_groups: List[Dict[str, Any]]
    stage_cfg: StageConfig
    sampler: Any
    steps_per_epoch: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    mixup_alpha: float = 0.0
    adjust_logits: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # e.g. Balanced Softmax's + log prior
    # What a broken start is blamed on, and what to do about it (see start_problem).
    origin: str = 'the model it starts from is broken'
    start_fix: str = 'check the initial weights and the preprocessing (data.mean / data.std / data.input_size)'
    checkpoint: Optional[str] = None  # its name under OUT/checkpoints (None: ``name``); a smoothing candidate's own


def _train_stage(accelerator, spec: StageSpec, data: TrainData, cfg: TrainConfig, out: Path,
                 resume: bool, choices: RuntimeChoices) -> torch.nn.Module:
    sc = spec.stage_cfg
    memory_format = torch.channels_last if choices.channels_last else torch.contiguous_format
    spec.model.to(memory_format=memory_format)
    seed = cfg.seed
    optimizer = torch.optim.SGD(spec.param_groups, lr=sc.lr, momentum=sc.momentum, weight_decay=sc.weight_decay)
    # One stage's state per checkpoint: forget the previous stage's model and optimizer, so that a
    # resumed stage 2 (without a stage 1 in this process) finds its own state as "model 0".
    accelerator.free_memory()
    model, optimizer = accelerator.prepare(spec.model, optimizer)
    recipe = stage_recipe(cfg, spec.name, data.meta)
    checkpoint = spec.checkpoint or spec.name
    if resume:  # before the first step: a resume with other settings would train a run nobody configured
        check_same_recipe((_newest_progress(out / 'checkpoints', checkpoint) or {}).get('recipe'), recipe, checkpoint)
    checkpointer = Checkpointer(out / 'checkpoints', checkpoint, accelerator, choices, recipe)
    configured_lrs = [group['initial_lr'] for group in spec.param_groups]
    start_epoch = checkpointer.restore() if resume else 0
    train_time = checkpointer.train_time_s() if start_epoch else 0.0
    # The restored optimizer carries the old run's lrs; the config (e.g. a lowered --set lr) wins.
    for group, lr in zip(optimizer.param_groups, configured_lrs):
        group['initial_lr'] = lr
    if start_epoch:
        logger.info('%s: resumed after epoch %d from %s', checkpoint, start_epoch, checkpointer.path)
        checkpointer.start_loss = checkpointer.recorded_start_loss()
    view, batch_transform = _training_view(cfg, data, accelerator.unwrap_model(model).pretrained_cfg,
                                           choices.decode_once)
    per_process_batch = _per_process_batch(sc.batch_size, accelerator.num_processes)
    rank = accelerator.process_index
    steps_per_epoch = min(math.ceil(len(spec.sampler) / per_process_batch), spec.steps_per_epoch)
    progress = StageProgress(spec.name, sc.epochs, steps_per_epoch, start_epoch,
                             accelerator.is_local_main_process, accelerator.num_processes)
    for epoch in range(start_epoch, sc.epochs):
        multiplier = lr_multiplier(epoch, sc)
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr'] * multiplier
        spec.sampler.set_epoch(epoch)
        torch.manual_seed(_seed_for(seed, spec.index, epoch, rank))
        mix_rng = np.random.default_rng([seed, spec.index, epoch, rank])
        loader = DataLoader(view, batch_size=per_process_batch, sampler=spec.sampler,
                            num_workers=cfg.data.num_workers,
                            generator=worker_generator(seed, epoch, rank),
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        model.train()
        seen, loss_sum, start = 0, 0.0, time.perf_counter()
        progress.start_epoch(epoch)
        for step, (images, targets) in enumerate(loader):
            if step >= spec.steps_per_epoch:
                break
            images = images.to(accelerator.device, non_blocking=True)
            targets = targets.to(accelerator.device, non_blocking=True)
            if batch_transform is not None:
                images = batch_transform(images)
            images = images.contiguous(memory_format=memory_format)
            with accelerator.autocast():
                if spec.mixup_alpha > 0:
                    mixed, y_a, y_b, lam = mixup_batch(images, targets, spec.mixup_alpha, mix_rng)
                    logits = model(mixed).float()
                    if spec.adjust_logits is not None:
                        logits = spec.adjust_logits(logits)
                    loss = mixup_cross_entropy(logits, y_a, y_b, lam)
                else:
                    loss = spec.loss_fn(model(images).float(), targets)
            value = float(loss.detach())
            if checkpointer.start_loss is None and epoch == 0 and step == 0:
                # The stage's own start: judged apart, so a broken starting model is named as such.
                bad_start = start_problem(value, data.num_classes)
                if bad_start:
                    raise TrainingError(f'{spec.name}: {bad_start}: {spec.origin}, not this stage\'s lr; '
                                        f'{spec.start_fix}. Nothing of {spec.name} was trained or written')
            if checkpointer.start_loss is None and math.isfinite(value):
                checkpointer.start_loss = value  # (a checkpoint from before start losses were recorded: its first)
            problem = loss_problem(value, data.num_classes, checkpointer.start_loss)
            if problem:
                last = checkpointer.latest_epoch()
                where = f'{checkpointer.path} (after epoch {last})' if last is not None else 'none yet'
                raise TrainingError(f'{spec.name}: {problem} at epoch {epoch} step {step}; stopped. '
                                    f'Last good checkpoint: {where}. Lower the lr (--set {spec.name}.lr=...) and '
                                    'rerun with --resume')
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            seen += images.shape[0]
            loss_sum += float(loss.detach()) * images.shape[0]
            progress.step(step + 1, loss_sum / seen, optimizer.param_groups[0]['lr'], images.shape[0])
        progress.end_epoch()
        elapsed = time.perf_counter() - start
        train_time += elapsed
        logger.info('%s epoch %d/%d: loss %.4f, lr %.5f, %.1f images/s (%d images, %.1f s)', spec.name, epoch + 1,
                    sc.epochs, loss_sum / max(seen, 1), optimizer.param_groups[0]['lr'],
                    seen * accelerator.num_processes / elapsed, seen * accelerator.num_processes, elapsed)
        accelerator.log({f'{spec.name}/loss': loss_sum / max(seen, 1), f'{spec.name}/lr': optimizer.param_groups[0]['lr'],
                         f'{spec.name}/images_per_s': seen * accelerator.num_processes / elapsed}, step=epoch)
        checkpointer.save(epoch, train_time)
    # Without these flags the returned model would keep Accelerate's autocast wrapper around its forward
    # (so the end-of-stage report would be measured in bf16, not fp32 like `evaluate` and `zoo --verify`)
    # and torch.compile's wrapper (whose state-dict keys carry an `_orig_mod.` prefix).
    trained = accelerator.unwrap_model(model, keep_fp32_wrapper=False, keep_torch_compile=False)
    trained.mislas_precise_bn = _precise_bn(accelerator, spec, trained, cfg, view, batch_transform, per_process_batch,
                                            steps_per_epoch, memory_format)
    trained.to(memory_format=torch.contiguous_format)  # saved weights must be plain contiguous tensors
    trained.mislas_train_time_s = train_time
    return trained


def _precise_bn(accelerator, spec: StageSpec, model: torch.nn.Module, cfg: TrainConfig, view, batch_transform,
                per_process_batch: int, steps_per_epoch: int, memory_format) -> Dict[str, int]:
    """A stage shorter than ``precise_bn_below_steps`` optimizer steps: re-estimate the running statistics
    of the BN layers it trained on one epoch of its own training batches (augmented, without mixup, in
    fp32 like the evaluation), averaged over the processes. A longer stage returns at once, touching
    nothing (no random draw either), so it trains exactly as before this pass existed. Returns what the
    recipe records."""
    sc = spec.stage_cfg
    stage_steps = sc.epochs * steps_per_epoch
    wanted = precise_bn_batches(stage_steps, sc.precise_bn_below_steps, steps_per_epoch, sc.batch_size)
    record = {'precise_bn_below_steps': sc.precise_bn_below_steps, 'precise_bn_batches': 0}
    if not wanted:
        return record
    model.train()  # a stage-2 model: only its shift-BN layers track statistics, the frozen backbone's stay
    if not tracking_bn_layers(model):
        return record
    seed, rank = cfg.seed, accelerator.process_index
    # The draw of the epoch after the last: its own stream, repeated exactly by a resumed run.
    spec.sampler.set_epoch(sc.epochs)
    torch.manual_seed(_seed_for(seed, spec.index, sc.epochs, rank))
    loader = DataLoader(view, batch_size=per_process_batch, sampler=spec.sampler, num_workers=cfg.data.num_workers,
                        generator=worker_generator(seed, sc.epochs, rank), persistent_workers=False)

    def batches():
        for step, (images, _) in enumerate(loader):
            if step >= wanted:
                break
            images = images.to(accelerator.device, non_blocking=True)
            if batch_transform is not None:
                images = batch_transform(images)
            yield images.contiguous(memory_format=memory_format)

    reduce = (lambda t: accelerator.reduce(t, 'mean')) if accelerator.num_processes > 1 else None
    record['precise_bn_batches'] = recompute_bn_stats(model, batches(), reduce)
    logger.info('%s: %d steps, under precise_bn_below_steps %d: BN running statistics re-estimated on %d '
                'training batches (precise BN)', spec.name, stage_steps, sc.precise_bn_below_steps,
                record['precise_bn_batches'])
    return record


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


class StageProgress:
    """Progress of a stage: a tqdm bar on a terminal; without one (nohup, CI, a scheduler) a log line
    at most every ``every_s`` seconds with epoch, step, loss, lr, images/s and the stage's ETA."""

    def __init__(self, stage: str, epochs: int, steps_per_epoch: int, start_epoch: int, is_main: bool,
                 num_processes: int = 1, every_s: float = 30.0, tty: Optional[bool] = None):
        self.stage, self.epochs, self.steps_per_epoch = stage, epochs, steps_per_epoch
        self.is_main, self.num_processes, self.every_s = is_main, num_processes, every_s
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.steps_left_at_start = (epochs - start_epoch) * steps_per_epoch
        self.steps_done = 0
        self.images = 0
        self.started = time.perf_counter()
        self.last_line = self.started
        self.bar = None
        self.epoch = start_epoch

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.is_main and self.tty:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.steps_per_epoch, desc=f'{self.stage} {epoch + 1}/{self.epochs}', leave=False)

    def eta_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        left = self.steps_left_at_start - self.steps_done
        return elapsed / max(self.steps_done, 1) * max(left, 0)

    def line(self, step: int, loss: float, lr: float) -> str:
        rate = self.images * self.num_processes / max(time.perf_counter() - self.started, 1e-9)
        eta = self.eta_s()
        return (f'{self.stage} epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps_per_epoch}: '
                f'loss {loss:.4f}, lr {lr:.5g}, {rate:.0f} images/s, stage ETA {_duration(eta)} '
                f'(ends ~{time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + eta))})')

    def step(self, step: int, loss: float, lr: float, batch: int) -> None:
        self.steps_done += 1
        self.images += batch
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.4g}', eta=_duration(self.eta_s()))
            return
        now = time.perf_counter()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            logger.info(self.line(step, loss, lr))

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f'{h}h{rest // 60:02d}m' if h else f'{rest // 60}m{rest % 60:02d}s'


def _per_process_batch(batch_size: int, num_processes: int) -> int:
    if batch_size % num_processes:
        raise ConfigError(f'batch_size {batch_size} (global) is not divisible by {num_processes} processes')
    return batch_size // num_processes


def _freeze_except(model: torch.nn.Module, prefixes: Optional[List[str]]) -> None:
    if not prefixes:
        return
    matched = False
    for name, param in model.named_parameters():
        keep = any(name.startswith(p) for p in prefixes)
        matched |= keep
        param.requires_grad_(keep)
    if not matched:
        raise ConfigError(f'stage1.trainable {prefixes} matches no parameter of the model')


def _stage1(accelerator, cfg, data: TrainData, out: Path, resume: bool, choices: RuntimeChoices) -> torch.nn.Module:
    sc = cfg.stage1
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.num_classes, data.label_names)
    _freeze_except(model, sc.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = InstanceSampler(len(data.train_labels), accelerator.num_processes, accelerator.process_index,
                              seed=cfg.seed)
    steps = math.ceil(len(sampler) / _per_process_batch(sc.batch_size, accelerator.num_processes))
    loss_fn: Callable = F.cross_entropy
    adjust = None
    if sc.loss == 'balanced_softmax':
        balanced = BalancedSoftmaxCrossEntropy(data.class_counts).to(accelerator.device)
        loss_fn, adjust = balanced, balanced.adjust
    spec = StageSpec('stage1', 1, model, [{'params': params, 'initial_lr': sc.lr}], sc, sampler, steps,
                     loss_fn, mixup_alpha=sc.mixup_alpha, adjust_logits=adjust)
    return _train_stage(accelerator, spec, data, cfg, out, resume, choices)


def _stage2(accelerator, cfg, data: TrainData, stage1_model: torch.nn.Module, out: Path, resume: bool,
            choices: RuntimeChoices, checkpoint: Optional[str] = None) -> torch.nn.Module:
    sc = cfg.stage2
    torch.manual_seed(_seed_for(cfg.seed, 2))
    model = to_stage2(stage1_model, head=sc.head, shift_bn=sc.shift_bn)
    groups = head_parameter_groups(model, sc.lr, sc.lr_factor)
    if sc.loss == 'las':
        loss_fn: Callable = LabelAwareSmoothing(data.class_counts, sc.smooth_head, sc.smooth_tail, shape=sc.las_shape,
                                                power=sc.las_power, formulation=sc.las_formulation).to(accelerator.device)
    else:
        loss_fn = F.cross_entropy
    sampler = ClassAwareSampler(data.train_labels, samples_per_class=sc.samples_per_class,
                                num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                                seed=_seed_for(cfg.seed, 2))
    # The reference loop ends a stage-2 epoch after ceil(N / batch) + 1 batches, not n_max * K samples.
    steps = math.ceil(len(data.train_labels) / sc.batch_size) + 1
    spec = StageSpec('stage2', 2, model, groups, sc, sampler, steps, loss_fn, origin=_stage1_summary(stage1_model),
                     start_fix='train stage 1 longer or pass a better stage-1 model (--init)', checkpoint=checkpoint)
    return _train_stage(accelerator, spec, data, cfg, out, resume, choices)


def _stage1_summary(stage1_model: torch.nn.Module) -> str:
    """'the stage-1 model it starts from is bad (...)': what is known of how it was trained and scored."""
    recorded = getattr(stage1_model, 'mislas_config', None) or {}
    facts = []
    epochs = (recorded.get('recipe') or {}).get('epochs')
    if epochs is not None:
        facts.append(f'{epochs} epoch{"" if epochs == 1 else "s"} of stage 1')
    nll = (getattr(stage1_model, 'mislas_metrics', None) or {}).get('nll')
    if nll is not None:
        facts.append(f'test NLL {nll:.3g}')
    return 'the stage-1 model it starts from is bad' + (f' ({", ".join(facts)})' if facts else '')


def _stage_meta(cfg: TrainConfig, data: TrainData, stage: int, command: str,
                stage1: Optional[Dict[str, Any]] = None, run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The config.json ``mislas`` block; a stage-2 model also records how its stage 1 was made."""
    sc = getattr(cfg, f'stage{stage}')
    recipe = {k: getattr(sc, k) for k in ('epochs', 'batch_size', 'lr', 'weight_decay', 'schedule', 'mixup_alpha',
                                          'head', 'shift_bn', 'lr_factor', 'loss', 'smooth_head', 'smooth_tail',
                                          'las_shape', 'las_formulation') if hasattr(sc, k)}
    meta = {**data.meta, 'preset': cfg.preset, 'stage': stage, 'seed': cfg.seed,
            'recipe': recipe, 'command': command, **(run or {})}
    if stage1 is not None:
        meta['stage1'] = stage1
    return meta


def _finish_stage(accelerator, model: torch.nn.Module, cfg, data: TrainData, out: Path, stage: int,
                  command: str, choices: RuntimeChoices, train_time_s: float,
                  stage1: Optional[Dict[str, Any]] = None) -> torch.nn.Module:
    """Evaluate on the test split (all processes, gathered) and write OUT/stage{N} (main process)."""
    folder = out / f'stage{stage}'
    run = {'runtime': choices.to_dict(), 'device': choices.device, 'train_time_s': round(train_time_s, 1),
           'num_processes': accelerator.num_processes, 'torch_version': torch.__version__}
    meta = _stage_meta(cfg, data, stage, command, stage1, run)
    meta['recipe'].update(getattr(model, 'mislas_precise_bn', None) or {})  # the pass's threshold, and if it ran
    if getattr(model, 'mislas_stage2_selection', None):  # how its smoothing was chosen on the validation split
        meta['stage2_selection'] = model.mislas_stage2_selection
    model.mislas_config = meta
    # A model trained here is not the published weights its architecture's default cfg names: it
    # records its own tag (preset and stage) and no hf_hub_id; the zoo build gives zoo folders theirs.
    pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ('hf_hub_id', 'url')}
    pretrained_cfg['tag'] = f'{(cfg.preset or "custom").replace("-", "_")}_stage{stage}'
    model.pretrained_cfg = model.default_cfg = pretrained_cfg
    report = evaluate(model, data.test, split=cfg.dataset.test_split, image_column=data.image_column,
                      label_column=data.label_column, batch_size=cfg.data.eval_batch_size,
                      num_workers=cfg.data.num_workers, accelerator=accelerator,
                      dataset_name=meta['dataset'])
    report['runtime'] = choices.to_dict()
    report['train_time_s'] = round(train_time_s, 1)
    model.mislas_metrics = report  # a stage 2 that starts badly quotes its stage-1 model's NLL
    if accelerator.is_main_process:
        save_hub_folder(model, folder, label_names=data.label_names, mislas=meta, metrics=report,
                        card_context={'title': f'{cfg.model.arch}, stage {stage} ({cfg.preset})',
                                      'limitations': cfg.limitations})
    accelerator.wait_for_everyone()
    logger.info('stage %d: top-1 %.2f%%, ECE %.2f%%, NLL %.4f -> %s', stage, 100 * report['top1'],
                100 * report['ece'], report['nll'], folder)
    return model


def _stage_done(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ('config.json', 'model.safetensors', 'metrics.json'))


def run_training(cfg: TrainConfig, *, output_dir: str, stage: str = 'all', init: Optional[str] = None,
                 resume: bool = False, mixed_precision: Optional[str] = None, report_to: Optional[str] = None,
                 max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
                 command: Optional[str] = None, cpu: bool = False) -> Dict[str, Path]:
    """Run the configured stages; return the written Hub folders.

    The run starts from ``cfg.model.init`` (``init`` sets it too): stage 1 fine-tunes its weights, a
    ``--stage 2`` run takes it as the stage-1 model, and in ``all`` stage 2 starts from ``OUT/stage1``.
    What the source decides (architecture, preprocessing, the sha256 of its weights) is resolved before
    any data is read (:func:`mislas_timm.initialization.resolve_start`).

    ``mixed_precision`` (None: the config's ``runtime.mixed_precision``, ``auto`` by default) and the
    other ``runtime`` choices are resolved once (see :mod:`mislas_timm.runtime`) and pinned in
    ``OUT/checkpoints/runtime.json``; a resumed run reuses the pinned ones.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from .trackers import check_report_to
    check_report_to(report_to)  # before any work: Accelerate only warns about a missing tracker and logs nowhere
    cfg = parse_config(cfg)
    if init is not None:  # the keyword form of model.init (train.py --init sets the key)
        cfg = parse_config({**cfg.to_dict(), 'model': {**cfg.to_dict()['model'], 'init': init}})
    out = Path(output_dir)
    check_output_dir(out)
    if stage not in ('1', '2', 'all'):
        raise ConfigError(f'--stage must be 1, 2 or all, got {stage!r}')
    stages = ('1', '2') if stage == 'all' else (stage,)
    _check_init(cfg.model.init, stage, out)
    # Before any data is read: the source loads, the architecture and preprocessing it gives, its sha256.
    cfg, _, init_notes = resolve_start(cfg, stage, out)
    _check_arch(cfg.model.arch)
    taken = [s for s in stages if _stage_done(out / f'stage{s}')
             or any(checkpoint_exists(out / 'checkpoints', name) for name in stage_checkpoints(cfg, s))]
    if not resume and taken:
        raise ConfigError(f'{out} already holds stage {taken[0]} of a run; pass --resume to continue it or choose '
                          'another --output-dir')
    fresh_resume = resume and not taken
    use_cpu = cpu or not has_accelerator()
    pinned_path = out / 'checkpoints' / 'runtime.json'
    pinned = load_pinned(pinned_path) if resume else None
    requested = dict(vars(cfg.runtime))
    if mixed_precision is not None:
        requested['mixed_precision'] = mixed_precision
    choices, notes = _resolve_runtime(cfg, requested, pinned, use_cpu)
    accelerator = Accelerator(mixed_precision=choices.mixed_precision, log_with=report_to, cpu=use_cpu,
                              dynamo_backend='inductor' if choices.compile else 'no',
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / 'logs')))
    choices = RuntimeChoices(**{**choices.to_dict(), 'num_processes': accelerator.num_processes})
    for s in stages:  # before stage 1's hours, not after them
        _per_process_batch(getattr(cfg, f'stage{s}').batch_size, accelerator.num_processes)
    resumed = [s for s in taken if not _stage_done(out / f'stage{s}')]  # a checkpoint of an unfinished stage
    if resume and pinned and resumed:
        check_resumable(pinned, choices)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    _setup_logging(out / 'train.log', accelerator.is_main_process)
    command = command or ' '.join(shlex.quote(a) for a in sys.argv)
    logger.info('command: %s', command)
    if fresh_resume:
        logger.info('no run in %s to resume: starting a new one', out)
    logger.info('%d process(es), device %s (%s)', accelerator.num_processes, accelerator.device, choices.device)
    for note in notes + init_notes:
        logger.info(note)
    if report_to:
        accelerator.init_trackers('mislas', config={'preset': cfg.preset})
    data = load_data(cfg, max_train_samples, max_eval_samples)
    if '2' in stages:  # before stage 1's hours: a smoothing selection needs validation images
        check_validation(cfg, data.val)
    if cfg.model.init:  # config.json's mislas block: the model the run started from, and its exact weights
        data.meta.update(init=cfg.model.init, init_sha256=cfg.model.init_sha256)
    if resume:  # before any stage runs (or is reported done): no stage may continue under another recipe
        check_resume_settings(cfg, data.meta, out, stages)
    logger.info('data: %d training images in %d classes (counts %s), %d validation images, %d test images; '
                'images: %s', len(data.train_labels), data.num_classes, data.class_counts,
                len(data.val) if data.val is not None else 0, len(data.test), data.meta.get('image_encoding'))
    wanted_decode = cfg.data.decode_once
    if pinned and 'decode_once' in pinned and wanted_decode == 'auto':
        decode_once = bool(pinned['decode_once'])  # the resumed run keeps its input path (and random stream)
    else:
        decode_once = resolve_decode_once(wanted_decode, cfg.data.train_transform, len(data.train_labels),
                                          cfg.data.input_size)
    choices = RuntimeChoices(**{**choices.to_dict(), 'decode_once': bool(decode_once)})
    logger.info('runtime: mixed precision %s (%s), channels-last %s, torch.compile %s, decode-once %s',
                choices.mixed_precision, choices.reason, choices.channels_last, choices.compile, choices.decode_once)
    written: Dict[str, Path] = {}
    stage1_model = None
    if stage in ('1', 'all'):
        if resume and _stage_done(out / 'stage1'):
            logger.info('stage 1 already complete in %s', out / 'stage1')
        else:
            stage1_model = _stage1(accelerator, cfg, data, out, resume, choices)
            _finish_stage(accelerator, stage1_model, cfg, data, out, 1, command, choices,
                          stage1_model.mislas_train_time_s)
        written['stage1'] = out / 'stage1'
    if stage in ('2', 'all'):
        # --stage 2 starts from --init; `all` from the stage 1 it just trained (OUT/stage1), not the source again.
        source = cfg.model.init if stage == '2' and cfg.model.init else str(out / 'stage1')
        if resume and _stage_done(out / 'stage2'):
            logger.info('stage 2 already complete in %s', out / 'stage2')
        else:
            if stage1_model is None:
                stage1_model = load_source(source)
            if getattr(stage1_model, 'num_classes', None) != data.num_classes:
                raise ConfigError(f'--init model {source} has {getattr(stage1_model, "num_classes", "?")} classes but '
                                  f'the data has {data.num_classes}; pass a stage-1 model trained on this data set')
            _apply_data_cfg(stage1_model, cfg, data.label_names)
            stage2_cfg = cfg
            if cfg.stage2.smoothing_candidates:  # one stage 2 per [eps_1, eps_K], the lowest validation NLL kept
                stage2_model, stage2_cfg = select_smoothing(
                    cfg, data, lambda c, name: _stage2(accelerator, c, data, stage1_model, out, resume, choices, name),
                    accelerator)
            else:
                stage2_model = _stage2(accelerator, cfg, data, stage1_model, out, resume, choices)
            recorded = getattr(stage1_model, 'mislas_config', None) or {}
            stage1_info = {'source': source, **{k: recorded.get(k) for k in (
                'command', 'recipe', 'train_time_s', 'device', 'runtime')}}
            _finish_stage(accelerator, fold_head(stage2_model), stage2_cfg, data, out, 2, command, choices,
                          stage2_model.mislas_train_time_s, stage1_info)
        written['stage2'] = out / 'stage2'
    if report_to:
        accelerator.end_training()
    return written


def _check_init(init: Optional[str], stage: str, out: Path) -> None:
    """A ``--stage 2`` run needs a stage-1 model, ``--init SOURCE`` or ``OUT/stage1``: check before any work.
    The source itself is checked by :func:`mislas_timm.initialization.resolve_start`."""
    if init is None and stage == '2' and not _stage_done(out / 'stage1'):
        raise ConfigError(f'--stage 2 needs a stage-1 model: pass --init SOURCE (or run stage 1 into {out})')


def check_output_dir(out: Path) -> None:
    """Refuse, before any work, an ``--output-dir`` that is a file, lies under one, or cannot be written in.

    The nearest existing folder of the path is probed by creating (and removing) a temporary folder in
    it: permission bits do not tell (root passes them; read-only mounts and ACLs do not show in them)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        if existing.is_symlink():  # a dangling link: mkdir would fail on it
            raise ConfigError(f'--output-dir {out}: {existing} is a broken symbolic link; pass another folder')
        existing = existing.parent
    if not existing.is_dir():
        where = 'is a file' if existing == out else f'lies under {existing}, which is a file'
        raise ConfigError(f'--output-dir {out} {where}, not a folder; pass a folder path (a new one is created)')
    try:
        os.rmdir(tempfile.mkdtemp(prefix='.mislas-write-check-', dir=existing))
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f'--output-dir {out}: cannot write in {existing} ({reason}); pass a folder you can write '
                          'to') from None


def _resolve_runtime(cfg: TrainConfig, requested: Dict[str, Any], pinned: Optional[Dict[str, Any]],
                     use_cpu: bool):
    """The run's RuntimeChoices (decode_once is settled after the data loads) and log notes.

    ``auto`` takes the pinned value of a resumed run; an explicit value wins over it."""
    import timm

    notes: List[str] = []
    wanted = {key: requested.get(key, 'auto') for key in ('mixed_precision', 'channels_last', 'compile')}
    if pinned:
        for key, value in wanted.items():
            if value == 'auto' and key in pinned:
                wanted[key] = pinned[key]
            elif value != 'auto' and key in pinned and value != pinned[key]:
                notes.append(f'runtime.{key}: {value} given explicitly; the run started with {pinned[key]}')
    probe = None
    if 'auto' in (wanted['mixed_precision'], wanted['channels_last']):
        probe = timm.create_model(cfg.model.arch, num_classes=cfg.dataset.num_classes or 10, **cfg.model.kwargs)
    channels_last = resolve_channels_last(wanted['channels_last'], probe)
    if wanted['mixed_precision'] == 'auto':
        # Several CPU processes could measure differently; they use the static rule instead.
        measure = int(os.environ.get('WORLD_SIZE', '1')) == 1
        precision, reason = resolve_mixed_precision('auto', probe, cfg.data.input_size, use_cpu=use_cpu,
                                                    channels_last=channels_last, measure=measure)
    else:
        precision = str(wanted['mixed_precision'])
        reason = 'pinned when the run started' if pinned and precision == pinned.get('mixed_precision') \
            and requested.get('mixed_precision', 'auto') == 'auto' else 'given explicitly'
        problem = precision_problem(precision, use_cpu)
        if problem and reason == 'given explicitly':
            raise ConfigError(f'--mixed-precision {precision} (runtime.mixed_precision): {problem}')
        if problem:
            raise ConfigError(f'--resume: the run started in {precision} (OUT/checkpoints/runtime.json) on a GPU: '
                              f'{problem}; resume it on a GPU')
    compile_model = wanted['compile'] is True
    return RuntimeChoices(precision, channels_last, compile_model, False, device_name(use_cpu), reason), notes


def check_resumable(pinned: Dict[str, Any], choices: RuntimeChoices) -> None:
    """Refuse, before any work, a resume whose checkpoint these choices cannot load.

    The saved state's layout depends on them: torch.compile and more than one process prefix the
    weight names (``_orig_mod.``, ``module.``), and only fp16 saves a gradient scaler."""
    started = pinned.get('num_processes')
    if started is not None and started != choices.num_processes:
        raise ConfigError(f'--resume: the run was checkpointed by {started} process(es), this start has '
                          f'{choices.num_processes}; resume with the same number (accelerate launch --num_processes '
                          f'{started})')
    if 'compile' in pinned and bool(pinned['compile']) != choices.compile:
        flag = 'with --compile' if pinned['compile'] else 'without --compile'
        raise ConfigError(f'--resume: the run started {flag} and its checkpoint holds the weights under those names; '
                          f'resume {flag}')
    was_fp16 = pinned.get('mixed_precision') == 'fp16'
    if was_fp16 != (choices.mixed_precision == 'fp16'):
        raise ConfigError(f'--resume: the run started in {pinned.get("mixed_precision")} and this start resolved '
                          f'{choices.mixed_precision}; fp16 checkpoints hold a gradient scaler the others lack, so '
                          f'resume with --mixed-precision {pinned.get("mixed_precision")}')


def _setup_logging(path: Path, is_main: bool) -> None:
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    if not is_main:
        logger.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S')
    for handler in (logging.FileHandler(path), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
