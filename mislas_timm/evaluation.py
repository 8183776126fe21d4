"""Evaluating a model on a data set split: the metrics.json report of DESIGN.md section 7.

The numbers come from :func:`mislas_timm.metrics.calibration_report`; this module only runs the
model (through Accelerate when given, so that every sample is counted once across processes).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from .data.hf import ImageClassificationView, build_eval_transform, load_split, resolve_columns
from .metrics import calibration_report

__all__ = ['evaluate', 'predict', 'eval_loader']


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
) -> Dict[str, Any]:
    """The full report (metrics.json) of ``model`` on ``dataset``.

    ``dataset``: a ``datasets.Dataset`` or any source :func:`~mislas_timm.data.hf.load_split`
    accepts (then ``split`` picks the split). ``class_counts`` / ``rank_split`` default to the ones
    recorded with the model (``model.mislas_config``, set by :func:`mislas_timm.load_model`).
    """
    if isinstance(dataset, str):
        name, ds = dataset_name or dataset, load_split(dataset, split)
    else:
        name, ds = dataset_name or getattr(dataset.info, 'dataset_name', None) or 'dataset', dataset
    image_column, label_column = resolve_columns(ds, image_column, label_column)
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    recorded = getattr(model, 'mislas_config', {}) or {}
    class_counts = class_counts if class_counts is not None else recorded.get('class_counts')
    rank_split = rank_split if rank_split is not None else recorded.get('rank_split')
    num_classes = getattr(model, 'num_classes', None)
    labels = ds[label_column]
    if num_classes and labels and max(labels) >= num_classes:
        raise ValueError(f'the data set has labels up to {max(labels)} but the model has {num_classes} classes; '
                         'evaluate on the data set the model was trained for (check --label-column)')
    loader = eval_loader(model, ds, image_column, label_column, batch_size, num_workers)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
    start = time.perf_counter()
    logits, targets = predict(model, loader, accelerator)
    wall = time.perf_counter() - start
    report = calibration_report(logits.softmax(dim=1), targets, class_counts, rank_split, n_bins=n_bins)
    report.update(split=split, dataset=str(name), wall_time_s=wall, images_per_s=len(targets) / max(wall, 1e-9))
    return report
