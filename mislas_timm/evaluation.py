"""Evaluating a model on a data set split: the metrics.json report of DESIGN.md section 7.

The numbers come from :func:`mislas_timm.metrics.calibration_report`; this module only runs the
model (through Accelerate when given, so that every sample is counted once across processes).

Shifted test distributions (the test-agnostic protocol of LADE / SADE, see
:mod:`mislas_timm.data.test_shift`): ``evaluate(..., test_imbalance=R, test_profile=...)`` runs the
model on one forward / backward long-tailed subset of the test split; :func:`evaluate_shifts` runs
it once on the whole split and derives the reports of several subsets from those logits.
"""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.hf import ImageClassificationView, build_eval_transform, labels_of, load_split, resolve_columns
from .data.test_shift import DEFAULT_SHIFT_RATIOS, check_test_shift, shift_name, shifted_test_indices
from .metrics import calibration_report

__all__ = ['evaluate', 'evaluate_shifts', 'default_shifts', 'predict', 'eval_loader']


def eval_loader(model: torch.nn.Module, ds, image_column: str, label_column: str,
                batch_size: int = 256, num_workers: int = 0) -> DataLoader:
    in_chans = int(model.pretrained_cfg.get('input_size', (3,))[0]) if hasattr(model, 'pretrained_cfg') else 3
    view = ImageClassificationView(ds, image_column, label_column, build_eval_transform(model), in_chans=in_chans)
    return DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=num_workers)


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


class _EvalSplit:
    """A loaded evaluation split with its columns, labels and the class counts that order its classes."""

    def __init__(self, model, dataset, split, image_column, label_column, class_counts, rank_split, max_samples,
                 dataset_name):
        if isinstance(dataset, str):
            self.name, ds = dataset_name or dataset, load_split(dataset, split)
        else:
            self.name, ds = dataset_name or getattr(dataset.info, 'dataset_name', None) or 'dataset', dataset
        self.image_column, self.label_column = resolve_columns(ds, image_column, label_column)
        if max_samples:
            ds = ds.select(range(min(max_samples, len(ds))))
        self.ds, self.split = ds, split
        recorded = getattr(model, 'mislas_config', {}) or {}
        self.class_counts = class_counts if class_counts is not None else recorded.get('class_counts')
        self.rank_split = rank_split if rank_split is not None else recorded.get('rank_split')
        num_classes = getattr(model, 'num_classes', None)
        self.labels = np.asarray(labels_of(ds, self.label_column), dtype=np.int64)
        if num_classes and self.labels.size and self.labels.max() >= num_classes:
            raise ValueError(f'the data set has labels up to {self.labels.max()} but the model has {num_classes} '
                             'classes; evaluate on the data set the model was trained for (check --label-column)')
        if self.class_counts is not None and num_classes and len(self.class_counts) != num_classes:
            raise ValueError(f'the recorded class_counts have {len(self.class_counts)} entries but the model has '
                             f'{num_classes} classes; fix mislas.class_counts in its config.json')
        self.num_classes = int(num_classes or (len(self.class_counts) if self.class_counts is not None else
                                               (self.labels.max() + 1 if self.labels.size else 1)))

    def shift_indices(self, imbalance: float, profile: str, seed: int) -> np.ndarray:
        if imbalance != 1:
            _require_class_counts(None, self.class_counts)
        counts = self.class_counts if self.class_counts is not None else [0] * self.num_classes
        return shifted_test_indices(self.labels, counts, imbalance, profile, seed)


def _require_class_counts(model, class_counts) -> None:
    """A shifted test set needs the training counts (given, or recorded with the model)."""
    if class_counts is None and model is not None:
        class_counts = (getattr(model, 'mislas_config', {}) or {}).get('class_counts')
    if class_counts is None:
        raise ValueError('a shifted test set (test imbalance != 1) orders the classes by their training counts, '
                         'but the model records none: add "mislas": {"class_counts": [...]} (training images per '
                         'class) to its config.json (train.py writes it), or evaluate with --test-imbalance 1')


def _shift_report(probs: torch.Tensor, targets: torch.Tensor, data: _EvalSplit, n_bins: int, imbalance: float,
                  profile: str, seed: int, wall: float, images_run: int) -> Dict[str, Any]:
    report = calibration_report(probs, targets, data.class_counts, data.rank_split, n_bins=n_bins)
    report.update(split=data.split, dataset=str(data.name), wall_time_s=wall, images_per_s=images_run / max(wall, 1e-9),
                  test_imbalance=float(imbalance), test_profile=profile, test_seed=int(seed),
                  test_class_counts=np.bincount(targets.numpy(), minlength=data.num_classes).tolist())
    return report


def evaluate(
        model: torch.nn.Module,
        dataset: Any,
        *,
        split: str = 'test',
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

    ``dataset``: a ``datasets.Dataset`` or any source :func:`~mislas_timm.data.hf.load_split`
    accepts (then ``split`` picks the split). ``class_counts`` / ``rank_split`` default to the ones
    recorded with the model (``model.mislas_config``, set by :func:`mislas_timm.load_model`).

    ``test_imbalance`` R > 1 evaluates on a long-tailed subset of the split instead of all of it:
    ``test_profile`` ``forward`` (frequent training classes keep most test images) or ``backward``,
    drawn with ``test_seed`` (see :func:`mislas_timm.data.test_shift.shifted_test_indices`); it needs
    the training ``class_counts``. The report records ``test_imbalance``, ``test_profile``,
    ``test_seed`` and ``test_class_counts`` (test images per class evaluated). ``max_samples`` cuts
    the split first. ValueError (one line) for a bad R / profile or missing class counts.
    """
    imbalance = check_test_shift(test_imbalance, test_profile)
    if imbalance != 1:
        _require_class_counts(model, class_counts)
    data = _EvalSplit(model, dataset, split, image_column, label_column, class_counts, rank_split, max_samples,
                      dataset_name)
    ds = data.ds
    if imbalance != 1:
        keep = data.shift_indices(imbalance, test_profile, test_seed)
        ds = ds.select(keep.tolist())
    loader = eval_loader(model, ds, data.image_column, data.label_column, batch_size, num_workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    start = time.perf_counter()
    logits, targets = predict(model, loader, accelerator)
    wall = time.perf_counter() - start
    return _shift_report(logits.softmax(dim=1), targets, data, n_bins, imbalance, test_profile, test_seed, wall,
                         len(targets))


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
        split: str = 'test',
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
    :func:`~mislas_timm.data.test_shift.shift_name` (``forward-50``, ``uniform``, ``backward-10``);
    each report is what :func:`evaluate` with ``test_imbalance=R, test_profile=profile,
    test_seed=seed`` gives (the same images; its wall time / images per second are the full pass's).
    Every shift is checked (R, profile, class counts, R <= n) before the model runs.
    """
    shifts = list(default_shifts() if shifts is None else shifts)
    checked = [(check_test_shift(r, profile), profile) for r, profile in shifts]
    if any(r != 1 for r, _ in checked):
        _require_class_counts(model, class_counts)
    data = _EvalSplit(model, dataset, split, image_column, label_column, class_counts, rank_split, max_samples,
                      dataset_name)
    selections: Dict[str, Tuple[float, str, np.ndarray]] = {}
    for r, profile in checked:
        name = shift_name(r, profile)
        if name not in selections:
            selections[name] = (r, profile, data.shift_indices(r, profile, seed))
    loader = eval_loader(model, data.ds, data.image_column, data.label_column, batch_size, num_workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    start = time.perf_counter()
    logits, targets = predict(model, loader, accelerator)
    wall = time.perf_counter() - start
    if not torch.equal(targets, torch.as_tensor(data.labels)):
        raise RuntimeError('the prediction pass returned the labels in another order than the split; '
                           'cannot subset its logits')
    probs = logits.softmax(dim=1)
    reports: Dict[str, Dict[str, Any]] = {}
    for name, (r, profile, keep) in selections.items():
        idx = torch.as_tensor(keep, dtype=torch.long)
        reports[name] = _shift_report(probs[idx], targets[idx], data, n_bins, r, profile, seed, wall, len(targets))
    return reports
