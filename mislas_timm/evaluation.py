"""Evaluating a model on a data set split: the metrics.json report of DESIGN.md section 7.

The numbers come from :func:`mislas_timm.metrics.calibration_report`; this module only reads the
split and runs the model (through Accelerate when given, so that every sample is counted once
across processes).

Reading: a split is read once into a :class:`DecodedSplit` (rows, columns, labels, the images'
encoding) and its images are decoded once per model geometry (the model's eval resize / crop,
timm's, on the PIL image) into uint8 pixels; normalisation (timm's ``ToTensor`` + ``Normalize``,
the same float32 operations) runs on whole batches, which go to the model channels-last, the fast
layout of CPU convolutions. :func:`evaluate_many` evaluates several models on one read and decode;
``evaluate(model, DecodedSplit(...))`` does the same one model at a time. ``wall_time_s`` /
``images_per_s`` cover the whole way from the stored files to the report: reading the split and
decoding its images for the model (``read_time_s``; done once for all the models sharing a
DecodedSplit and an input geometry) plus the model's pass and metrics.

A model whose run recorded training on images stored otherwise than the split's (original pixels
against a JPEG copy) is still evaluated, with an :class:`~mislas_timm.data.encoding.EncodingMismatchWarning`
naming both encodings (:func:`mislas_timm.data.encoding.encoding_mismatch`).

Shifted test distributions (the test-agnostic protocol of LADE / SADE, see
:mod:`mislas_timm.data.label_shift`): ``evaluate(..., test_imbalance=R, test_profile=...)`` runs the
model on one forward / backward long-tailed subset of the test split; :func:`evaluate_shifts` runs
it once on the whole split and derives the reports of several subsets from those logits.
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from .data.batch_augment import _images as decoded_images
from .data.encoding import EncodingMismatchWarning, encoding_mismatch, image_encoding, recorded_encoding
from .data.hf import (DECODE_ERRORS, DataError, ImageClassificationView, build_eval_transform, image_error,
                      labels_of, load_split, resolve_columns, to_model_mode)
from .data.label_shift import DEFAULT_SHIFT_RATIOS, check_test_shift, shift_name, shifted_test_indices
from .metrics import calibration_report

__all__ = ['evaluate', 'evaluate_many', 'evaluate_shifts', 'default_shifts', 'predict', 'eval_loader',
           'DecodedSplit', 'MAX_DECODED_BYTES', 'one_line_warnings', 'model_label']

# A split is decoded into memory up front when its pixels (at the model's input size) fit in this;
# larger ones (ImageNet-LT's 50,000 test images at 224 x 224: 7.5 GB) are decoded batch by batch.
MAX_DECODED_BYTES = 1024 ** 3


class _Pipeline(NamedTuple):
    """A model's eval preprocessing split where timm's transform turns the PIL image into a tensor."""
    geometry: Callable   # PIL -> PIL (resize, crop); decoded pixels are cached per (in_chans, geometry)
    key: str
    mean: torch.Tensor   # (1, C, 1, 1) float32
    std: torch.Tensor
    in_chans: int


def _in_chans(model: torch.nn.Module) -> int:
    return int(model.pretrained_cfg.get('input_size', (3,))[0]) if hasattr(model, 'pretrained_cfg') else 3


def _pipeline(model: torch.nn.Module) -> Optional[_Pipeline]:
    """timm's eval transform as (PIL geometry, normalisation), or None for a transform of another shape
    (then the per-image transform runs as it is)."""
    from torchvision import transforms as T

    transform = build_eval_transform(model)
    ops = list(getattr(transform, 'transforms', [transform]))
    to_tensor = [i for i, op in enumerate(ops) if type(op).__name__ in ('ToTensor', 'MaybeToTensor')]
    if len(to_tensor) != 1 or to_tensor[0] != len(ops) - 2 or type(ops[-1]) is not T.Normalize:
        return None
    in_chans = _in_chans(model)
    geometry = T.Compose(ops[:-2])
    mean = torch.as_tensor(ops[-1].mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = torch.as_tensor(ops[-1].std, dtype=torch.float32).reshape(1, -1, 1, 1)
    if mean.shape[1] not in (1, in_chans) or std.shape[1] not in (1, in_chans):
        return None
    key = f'{in_chans} channels, ' + ', '.join(repr(op) for op in ops[:-2])
    return _Pipeline(geometry, key, mean, std, in_chans)


def _pixels_of(image, pipe: _Pipeline, image_column: str) -> np.ndarray:
    """One image after the model's geometry, as H x W x C uint8."""
    if not hasattr(image, 'mode'):
        raise DataError(f'column {image_column!r} does not hold images (got {type(image).__name__}); '
                        'pass --image-column')
    array = np.asarray(pipe.geometry(to_model_mode(image, pipe.in_chans)), dtype=np.uint8)
    return array.reshape(array.shape[0], array.shape[1], pipe.in_chans)


def _decode_all(ds, image_column: str, pipe: _Pipeline) -> Optional[torch.Tensor]:
    """Every image of ``ds`` after the model's geometry, N x H x W x C uint8 (one pass with the
    column iterator; a DataError names the first undecodable row); None when they do not share one
    size or do not fit in MAX_DECODED_BYTES."""
    pixels = None
    for i, image in enumerate(decoded_images(ds, image_column)):
        array = _pixels_of(image, pipe, image_column)
        if pixels is None:
            if len(ds) * array.size > MAX_DECODED_BYTES:
                return None
            pixels = np.empty((len(ds),) + array.shape, dtype=np.uint8)
        if array.shape != pixels.shape[1:]:
            return None
        pixels[i] = array
    return torch.from_numpy(pixels) if pixels is not None else None


class _Pixels(TorchDataset):
    """(H x W x C uint8 pixels, label) per row of a decoded split, for ``rows`` of it (default all)."""

    def __init__(self, pixels: torch.Tensor, labels: np.ndarray, rows: Optional[np.ndarray] = None):
        self.pixels, self.labels = pixels, labels
        self.rows = np.arange(len(labels)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = int(self.rows[index])
        return self.pixels[row], int(self.labels[row])


class _RowPixels(TorchDataset):
    """(H x W x C uint8 pixels, label) decoded row by row as read (large splits, loader workers, DDP shards)."""

    def __init__(self, ds, image_column: str, labels: np.ndarray, pipe: _Pipeline, rows: Optional[np.ndarray] = None):
        self.ds, self.image_column, self.labels, self.pipe = ds, image_column, labels, pipe
        self.rows = np.arange(len(labels)) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = int(self.rows[index])
        try:
            image = self.ds[row][self.image_column]
        except DataError:
            raise
        except DECODE_ERRORS as err:
            raise image_error(self.ds, row, self.image_column, err) from None
        return torch.from_numpy(_pixels_of(image, self.pipe, self.image_column)), int(self.labels[row])


class _NormalizeBatch:
    """Collate: stack uint8 H x W x C pixels, then timm's ToTensor + Normalize on the whole batch (the same
    float32 operations, so the same numbers), channels-last."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean, self.std = mean, std

    def __call__(self, items):
        pixels = torch.stack([p for p, _ in items]).permute(0, 3, 1, 2)  # a channels-last view, no copy
        images = pixels.float().div(255).sub_(self.mean).div_(self.std)
        return images, torch.as_tensor([y for _, y in items], dtype=torch.int64)


class DecodedSplit:
    """One split of a data set read once: its rows, columns, labels and the encoding of its images, with
    the images decoded once per model geometry and kept (``cache``), so that several models are
    evaluated on one read and decode (``evaluate(model, decoded)``, :func:`evaluate_many`).

    ``dataset``: a ``datasets.Dataset`` or any source :func:`~mislas_timm.data.hf.load_split` accepts
    (``split`` picks the split). ``max_samples`` keeps the first N rows. ``read_time_s``: the seconds
    spent reading the split (rows, labels, encoding); :meth:`time_for` adds a model's decoding.
    """

    def __init__(self, dataset: Any, split: str = 'test', *, image_column: Optional[str] = None,
                 label_column: Optional[str] = None, max_samples: Optional[int] = None,
                 dataset_name: Optional[str] = None, cache: bool = True):
        start = time.perf_counter()
        if isinstance(dataset, str):
            self.name, ds = dataset_name or dataset, load_split(dataset, split)
        else:
            self.name, ds = dataset_name or getattr(dataset.info, 'dataset_name', None) or 'dataset', dataset
        self.image_column, self.label_column = resolve_columns(ds, image_column, label_column)
        if max_samples:
            ds = ds.select(range(min(max_samples, len(ds))))
        self.ds, self.split, self.max_samples, self.cache = ds, split, max_samples, cache
        self.labels = np.asarray(labels_of(ds, self.label_column), dtype=np.int64)
        self._pixels: Dict[str, Optional[torch.Tensor]] = {}
        self._decode_s: Dict[str, float] = {}
        self._encoding: Optional[str] = None
        self.read_time_s = time.perf_counter() - start

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f'DecodedSplit({self.name!r}, split={self.split!r}, rows={len(self)})'

    @property
    def encoding(self) -> str:
        """How the split's image files are stored (:func:`~mislas_timm.data.encoding.image_encoding`)."""
        if self._encoding is None:
            start = time.perf_counter()
            self._encoding = image_encoding(self.ds, self.image_column)
            self.read_time_s += time.perf_counter() - start
        return self._encoding

    def time_for(self, model: torch.nn.Module) -> float:
        """Seconds of reading the split and decoding its images for ``model`` (its input geometry) ahead of the pass."""
        pipe = _pipeline(model)
        return self.read_time_s + (self._decode_s.get(pipe.key, 0.0) if pipe is not None else 0.0)

    def seconds_spent(self) -> float:
        """Every second spent reading and decoding so far (all geometries)."""
        return self.read_time_s + sum(self._decode_s.values())

    def _decode(self, pipe: _Pipeline, rows: Optional[np.ndarray]) -> Optional[torch.Tensor]:
        start = time.perf_counter()
        ds = self.ds if rows is None else self.ds.select(rows.tolist())
        pixels = _decode_all(ds, self.image_column, pipe)
        self._decode_s[pipe.key] = self._decode_s.get(pipe.key, 0.0) + time.perf_counter() - start
        return pixels

    def view(self, model: torch.nn.Module, rows: Optional[Sequence[int]] = None, *, decode_ahead: bool = True):
        """(torch dataset of (pixels, label), collate_fn) of ``rows`` (default all) for ``model``; the
        collate returns (normalised float images, channels-last; labels). ``decode_ahead`` False decodes
        row by row as the loader reads (loader workers, one shard per process)."""
        pipe = _pipeline(model)
        rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if pipe is None:  # a transform of another shape: per image, as timm gives it
            ds = self.ds if rows is None else self.ds.select(rows.tolist())
            view = ImageClassificationView(ds, self.image_column, self.label_column, build_eval_transform(model),
                                           in_chans=_in_chans(model))
            return view, None
        collate = _NormalizeBatch(pipe.mean, pipe.std)
        if pipe.key not in self._pixels and decode_ahead:
            if self.cache or rows is None:
                pixels = self._decode(pipe, None)
                if self.cache:
                    self._pixels[pipe.key] = pixels
                if pixels is not None:
                    return _Pixels(pixels, self.labels, rows), collate
            else:  # a subset of a split read for one model: decode only those rows
                pixels = self._decode(pipe, rows)
                if pixels is not None:
                    return _Pixels(pixels, self.labels[rows]), collate
        if self._pixels.get(pipe.key) is not None:
            return _Pixels(self._pixels[pipe.key], self.labels, rows), collate
        return _RowPixels(self.ds, self.image_column, self.labels, pipe, rows), collate


def _as_split(dataset: Any, split: Optional[str], image_column: Optional[str], label_column: Optional[str],
              max_samples: Optional[int], dataset_name: Optional[str], cache: bool) -> DecodedSplit:
    """``dataset`` as a DecodedSplit; a DecodedSplit given with other split / columns / max_samples is refused."""
    if not isinstance(dataset, DecodedSplit):
        return DecodedSplit(dataset, split or 'test', image_column=image_column, label_column=label_column,
                            max_samples=max_samples, dataset_name=dataset_name, cache=cache)
    asked = {'split': split, 'image_column': image_column, 'label_column': label_column, 'max_samples': max_samples}
    for key, value in asked.items():
        if value is not None and value != getattr(dataset, key):
            raise ValueError(f'{key}={value!r} was given with a DecodedSplit that has {key}='
                             f'{getattr(dataset, key)!r}: pass it to DecodedSplit(...) instead')
    return dataset


def eval_loader(model: torch.nn.Module, ds, image_column: Optional[str] = None, label_column: Optional[str] = None,
                batch_size: int = 256, num_workers: int = 0, rows: Optional[Sequence[int]] = None) -> DataLoader:
    """A loader of (normalised images, labels) batches of ``ds`` (a ``datasets.Dataset`` or a
    :class:`DecodedSplit`) as ``model`` is evaluated on them; ``rows``: a subset of the rows."""
    data = _as_split(ds, None, image_column, label_column, None, None, cache=False)
    view, collate = data.view(model, rows, decode_ahead=num_workers == 0)
    return DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)


@torch.no_grad()
def predict(model: torch.nn.Module, loader, accelerator=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over the whole loader, in fp32 on the CPU; gathered once per sample under DDP."""
    model.eval()
    all_logits, all_labels = [], []
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        # fp32 always (no autocast): reported metrics must not depend on the precision a run trained in,
        # so `python -m mislas_timm.evaluate` and `zoo --verify` reproduce them on any machine.
        logits = model(images)
        if accelerator is not None:
            logits, labels = accelerator.gather_for_metrics((logits.float().contiguous(), labels))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


class _Facts(NamedTuple):
    """What a report needs of the model beside its predictions: class counts, group split, classes."""
    class_counts: Optional[Sequence[int]]
    rank_split: Optional[Sequence[int]]
    num_classes: int


def _facts(model, data: DecodedSplit, class_counts, rank_split) -> _Facts:
    recorded = getattr(model, 'mislas_config', {}) or {}
    class_counts = class_counts if class_counts is not None else recorded.get('class_counts')
    rank_split = rank_split if rank_split is not None else recorded.get('rank_split')
    num_classes = getattr(model, 'num_classes', None)
    labels = data.labels
    if num_classes and labels.size and labels.max() >= num_classes:
        raise ValueError(f'the data set has labels up to {labels.max()} but the model has {num_classes} '
                         'classes; evaluate on the data set the model was trained for (check --label-column)')
    if class_counts is not None and num_classes and len(class_counts) != num_classes:
        raise ValueError(f'the recorded class_counts have {len(class_counts)} entries but the model has '
                         f'{num_classes} classes; fix mislas.class_counts in its config.json')
    num_classes = int(num_classes or (len(class_counts) if class_counts is not None else
                                      (labels.max() + 1 if labels.size else 1)))
    return _Facts(class_counts, rank_split, num_classes)


def _shift_indices(data: DecodedSplit, facts: _Facts, imbalance: float, profile: str, seed: int) -> np.ndarray:
    if imbalance != 1:
        _require_class_counts(None, facts.class_counts)
    counts = facts.class_counts if facts.class_counts is not None else [0] * facts.num_classes
    return shifted_test_indices(data.labels, counts, imbalance, profile, seed)


def _require_class_counts(model, class_counts) -> None:
    """A shifted test set needs the training counts (given, or recorded with the model)."""
    if class_counts is None and model is not None:
        class_counts = (getattr(model, 'mislas_config', {}) or {}).get('class_counts')
    if class_counts is None:
        raise ValueError('a shifted test set (test imbalance != 1) orders the classes by their training counts, '
                         'but the model records none: add "mislas": {"class_counts": [...]} (training images per '
                         'class) to its config.json (train.py writes it), or evaluate with --test-imbalance 1')


def model_label(model: torch.nn.Module) -> str:
    """How a warning names a model: ``model ARCH.TAG`` from its pretrained cfg."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    arch = cfg.get('architecture') or type(model).__name__
    return f'model {arch}.{cfg["tag"]}' if cfg.get('tag') else f'model {arch}'


def _warn_encoding(model: torch.nn.Module, data: DecodedSplit, data_name: str) -> None:
    """Warn (EncodingMismatchWarning) when the model trained on images stored unlike the split's."""
    if not recorded_encoding(model):  # nothing to compare with: do not read the split's bytes
        return
    problem = encoding_mismatch(model, data.encoding, model_label(model), f'{data_name} ({data.split} split)')
    if problem:
        warnings.warn(f'{problem}: its numbers here are not comparable with the ones measured on the images it '
                      'was trained on; evaluate it on that copy to reproduce its card', EncodingMismatchWarning,
                      stacklevel=3)


@contextlib.contextmanager
def one_line_warnings(prog: str) -> Iterator[None]:
    """In a command line: each warning as one line ``PROG: warning: MESSAGE`` on stderr, each text once."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = ' '.join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f'{prog}: warning: {text}', file=file or sys.stderr)

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


class _Clock:
    """A report's timing: the call's own time, with the split's reading and decoding for the model counted
    whenever it was done (before the call, for a DecodedSplit shared by several models)."""

    def __init__(self, data_or_none: Optional[DecodedSplit]):
        self.start = time.perf_counter()
        self.spent_before = data_or_none.seconds_spent() if data_or_none is not None else 0.0

    def wall(self, data: DecodedSplit, model: torch.nn.Module) -> Tuple[float, float]:
        """(wall_time_s, read_time_s): seconds from the stored files to this report, and of them, reading the
        split and decoding it for ``model``."""
        call = time.perf_counter() - self.start
        read = data.time_for(model)
        return call - (data.seconds_spent() - self.spent_before) + read, read


def _report(probs: torch.Tensor, targets: torch.Tensor, data: DecodedSplit, facts: _Facts, name: str, n_bins: int,
            imbalance: float, profile: str, seed: int) -> Dict[str, Any]:
    report = calibration_report(probs, targets, facts.class_counts, facts.rank_split, n_bins=n_bins)
    report.update(split=data.split, dataset=str(name), test_imbalance=float(imbalance), test_profile=profile,
                  test_seed=int(seed),
                  test_class_counts=np.bincount(targets.numpy(), minlength=facts.num_classes).tolist())
    return report


def _timed(report: Dict[str, Any], timing: Tuple[float, float], images_run: int) -> Dict[str, Any]:
    wall, read = timing
    report.update(wall_time_s=wall, images_per_s=images_run / max(wall, 1e-9), read_time_s=read)
    return report


def _loader(model, data: DecodedSplit, rows, batch_size: int, num_workers: int, accelerator):
    shards = accelerator is not None and accelerator.num_processes > 1  # each process decodes its own shard
    view, collate = data.view(model, rows, decode_ahead=num_workers == 0 and not shards)
    loader = DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    return accelerator.prepare_data_loader(loader) if accelerator is not None else loader


def evaluate(
        model: torch.nn.Module,
        dataset: Any,
        *,
        split: Optional[str] = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        class_counts: Optional[Sequence[int]] = None,
        rank_split: Optional[Sequence[int]] = None,
        batch_size: int = 256,
        num_workers: int = 0,
        max_samples: Optional[int] = None,
        accelerator=None,
        dataset_name: Optional[str] = None,
        n_bins: int = 15,
        test_imbalance: float = 1.0,
        test_profile: str = 'forward',
        test_seed: int = 0,
) -> Dict[str, Any]:
    """The full report (metrics.json) of ``model`` on ``dataset``.

    ``dataset``: a ``datasets.Dataset``, any source :func:`~mislas_timm.data.hf.load_split` accepts
    (then ``split`` picks the split, default ``test``), or a :class:`DecodedSplit` (read and decoded
    once for several models; it brings its own split, columns and max_samples). ``class_counts`` /
    ``rank_split`` default to the ones recorded with the model (``model.mislas_config``, set by
    :func:`mislas_timm.load_model`). ``wall_time_s`` / ``images_per_s`` cover reading the split to
    the report (``read_time_s`` of it reading the split and decoding it for the model). A model recorded as trained on
    images stored otherwise than the split's gets an ``EncodingMismatchWarning`` naming both.

    ``test_imbalance`` R > 1 evaluates on a long-tailed subset of the split instead of all of it:
    ``test_profile`` ``forward`` (frequent training classes keep most test images) or ``backward``,
    drawn with ``test_seed`` (see :func:`mislas_timm.data.label_shift.shifted_test_indices`); it needs
    the training ``class_counts``. The report records ``test_imbalance``, ``test_profile``,
    ``test_seed`` and ``test_class_counts`` (test images per class evaluated). ``max_samples`` cuts
    the split first. ValueError (one line) for a bad R / profile or missing class counts.
    """
    clock = _Clock(dataset if isinstance(dataset, DecodedSplit) else None)
    imbalance = check_test_shift(test_imbalance, test_profile)
    if imbalance != 1:
        _require_class_counts(model, class_counts)
    data = _as_split(dataset, split, image_column, label_column, max_samples, dataset_name, cache=False)
    facts = _facts(model, data, class_counts, rank_split)
    name = dataset_name or data.name
    rows = _shift_indices(data, facts, imbalance, test_profile, test_seed) if imbalance != 1 else None
    _warn_encoding(model, data, name)
    logits, targets = predict(model, _loader(model, data, rows, batch_size, num_workers, accelerator), accelerator)
    report = _report(logits.softmax(dim=1), targets, data, facts, name, n_bins, imbalance, test_profile, test_seed)
    return _timed(report, clock.wall(data, model), len(targets))


def evaluate_many(
        models: Sequence[torch.nn.Module],
        dataset: Any,
        *,
        split: Optional[str] = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        max_samples: Optional[int] = None,
        dataset_name: Optional[str] = None,
        **kwargs: Any,
) -> List[Dict[str, Any]]:
    """The reports of several models on ONE read and decode of a split: ``[evaluate(m, ...) for m in
    models]`` with the same numbers, in the models' order.

    The split is read once into a :class:`DecodedSplit` and its images decoded once for all the models
    that share an input geometry (size, resize, crop); each report's ``wall_time_s`` is that shared
    ``read_time_s`` plus the model's own pass and metrics. ``kwargs``: the other options of
    :func:`evaluate` (batch_size, class_counts, test_imbalance, ...), the same for every model.
    """
    data = _as_split(dataset, split, image_column, label_column, max_samples, dataset_name, cache=True)
    return [evaluate(model, data, dataset_name=dataset_name, **kwargs) for model in models]


def default_shifts(ratios: Sequence[float] = DEFAULT_SHIFT_RATIOS) -> List[Tuple[float, str]]:
    """SADE's table of test distributions: forward ``ratios`` (large to small), uniform, backward (small to large).

    ``default_shifts((50, 10))`` == ``[(50, 'forward'), (10, 'forward'), (1, 'forward'), (10, 'backward'),
    (50, 'backward')]``."""
    ordered = sorted({float(r) for r in ratios if float(r) != 1}, reverse=True)
    return ([(r, 'forward') for r in ordered] + [(1.0, 'forward')]
            + [(r, 'backward') for r in reversed(ordered)])


def evaluate_shifts(
        model: torch.nn.Module,
        dataset: Any,
        shifts: Optional[Sequence[Tuple[float, str]]] = None,
        *,
        seed: int = 0,
        split: Optional[str] = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        class_counts: Optional[Sequence[int]] = None,
        rank_split: Optional[Sequence[int]] = None,
        batch_size: int = 256,
        num_workers: int = 0,
        max_samples: Optional[int] = None,
        accelerator=None,
        dataset_name: Optional[str] = None,
        n_bins: int = 15,
) -> Dict[str, Dict[str, Any]]:
    """Reports on several shifted test distributions from ONE prediction pass over the whole split.

    ``shifts``: (R, profile) pairs, default :func:`default_shifts` (forward 50 ... 2, uniform,
    backward 2 ... 50). Returns ``{name: report}`` in that order, names from
    :func:`~mislas_timm.data.label_shift.shift_name` (``forward-50``, ``uniform``, ``backward-10``);
    each report is what :func:`evaluate` with ``test_imbalance=R, test_profile=profile,
    test_seed=seed`` gives (the same images; its wall time / images per second are the whole call's, the
    full pass over the split). Every shift is checked (R, profile, class counts, R <= n) before the model runs.
    ``dataset`` may be a :class:`DecodedSplit`, as for :func:`evaluate`.
    """
    clock = _Clock(dataset if isinstance(dataset, DecodedSplit) else None)
    shifts = list(default_shifts() if shifts is None else shifts)
    checked = [(check_test_shift(r, profile), profile) for r, profile in shifts]
    if any(r != 1 for r, _ in checked):
        _require_class_counts(model, class_counts)
    data = _as_split(dataset, split, image_column, label_column, max_samples, dataset_name, cache=False)
    facts = _facts(model, data, class_counts, rank_split)
    data_name = dataset_name or data.name
    selections: Dict[str, Tuple[float, str, np.ndarray]] = {}
    for r, profile in checked:
        name = shift_name(r, profile)
        if name not in selections:
            selections[name] = (r, profile, _shift_indices(data, facts, r, profile, seed))
    _warn_encoding(model, data, data_name)
    logits, targets = predict(model, _loader(model, data, None, batch_size, num_workers, accelerator), accelerator)
    if not torch.equal(targets, torch.as_tensor(data.labels)):
        raise RuntimeError('the prediction pass returned the labels in another order than the split; '
                           'cannot subset its logits')
    probs = logits.softmax(dim=1)
    reports: Dict[str, Dict[str, Any]] = {}
    for name, (r, profile, keep) in selections.items():
        idx = torch.as_tensor(keep, dtype=torch.long)
        reports[name] = _report(probs[idx], targets[idx], data, facts, data_name, n_bins, r, profile, seed)
    timing = clock.wall(data, model)
    return {name: _timed(report, timing, len(targets)) for name, report in reports.items()}
