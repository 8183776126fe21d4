"""Choosing stage 2's label-aware smoothing on the validation split (``stage2.smoothing_candidates``).

Label-aware smoothing's eps_1 (head) and eps_K (tail) depend on the data: the paper tuned them per data
set (CIFAR-10-LT 0.3 / 0.0, CIFAR-100-LT 0.4 / 0.1). Taken to other data they can leave stage 2 less
calibrated than stage 1: Fashion-MNIST-LT fine-tuned from the CIFAR-10-LT zoo model went from ECE 2.23%
after stage 1 to 6.04% after a stage 2 with CIFAR-10-LT's 0.3 / 0.0.

With candidates ``[[eps_1, eps_K], ...]``, stage 2 trains once per pair, each from the same stage-1 model
with the same seed and sampler stream (so the pairs differ in their smoothing only), scores each on the
validation split (never the test split) and keeps one by this rule:

    the lowest validation NLL; ties go to the smaller eps_1, then the smaller eps_K.

NLL is a proper scoring rule: it is minimised in expectation only by the true class probabilities, so it
rewards accuracy and calibration together. Top-1 alone ignores calibration (what the smoothing is for),
and ECE alone is met by a model that is calibrated but wrong more often. A tie keeps the milder smoothing.

The chosen pair becomes the stage's ``smooth_head`` / ``smooth_tail`` (its recipe in config.json), and
the selection is recorded beside it in the ``mislas`` block as ``stage2_selection``: ``criterion``,
``rule``, ``split``, ``num_samples``, ``candidates`` (``smooth_head, smooth_tail, val_top1, val_ece,
val_nll, train_time_s`` each; rates are fractions) and ``chosen`` (``index, smooth_head, smooth_tail``).
The stage's training time is the sum over the candidates.

Resume: each candidate checkpoints under its own name, ``OUT/checkpoints/stage2-candidate<i>`` (``i`` its
place in the list, which the checkpoint's recipe records). A resumed selection restores a finished
candidate's last state (none of its epochs is trained again) and scores it on the validation split again
(the same numbers: evaluation is deterministic), continues an interrupted candidate from its last complete
epoch, and trains the ones not started.

This module knows nothing of the training loop: :func:`mislas_timm.training.run_training` passes the
function that trains one candidate (no import cycle).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .config import ConfigError, TrainConfig, has_validation_split
from .evaluation import DecodedSplit, evaluate
from .stage2 import fold_head

__all__ = ['CRITERION', 'RULE', 'candidate_checkpoint', 'stage_checkpoints', 'with_smoothing', 'check_validation',
           'choose', 'select_smoothing', 'recorded_recipe']

logger = logging.getLogger('mislas_timm.train')  # the training log (OUT/train.log)

CRITERION = 'val_nll'
RULE = ('lowest validation NLL (a proper scoring rule: accuracy and calibration together); ties: the smaller '
        'smooth_head (eps_1), then the smaller smooth_tail (eps_K)')


def candidate_checkpoint(index: int) -> str:
    """The checkpoint name (under ``OUT/checkpoints``) of candidate ``index`` (0-based)."""
    return f'stage2-candidate{index}'


def stage_checkpoints(cfg: TrainConfig, stage: str) -> List[str]:
    """The checkpoint names stage ``stage`` ('1' / '2') of this config may have written."""
    names = [f'stage{stage}']
    if str(stage) == '2' and cfg.stage2.smoothing_candidates:
        names += [candidate_checkpoint(i) for i in range(len(cfg.stage2.smoothing_candidates))]
    return names


def with_smoothing(cfg: TrainConfig, smooth_head: float, smooth_tail: float) -> TrainConfig:
    """A copy of ``cfg`` whose stage 2 trains with this pair (the candidates stay, so the recipe names them)."""
    return dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, smooth_head=float(smooth_head),
                                                                smooth_tail=float(smooth_tail)))


def check_validation(cfg: TrainConfig, val: Any) -> None:
    """Refuse (ConfigError, one line) a selection without validation images; call it before any training.

    The config check (:func:`mislas_timm.config.parse_config`) already refuses a config without a validation
    split; this catches one that came out empty (every class too small to give up an image)."""
    if not cfg.stage2.smoothing_candidates:
        return
    if not has_validation_split(cfg) or val is None or not len(val):
        raise ConfigError('stage2.smoothing_candidates: the run has no validation images to choose stage 2\'s '
                          'smoothing on (never the test split); give a validation split (dataset.val_per_class, '
                          'dataset.val_split or --val-list) or set stage2.smoothing_candidates=null')


def _key(record: Dict[str, Any]) -> Tuple[float, float, float]:
    nll = float(record['val_nll'])
    return (nll if math.isfinite(nll) else math.inf, float(record['smooth_head']), float(record['smooth_tail']))


def choose(records: Sequence[Dict[str, Any]]) -> int:
    """The index of the record :data:`RULE` keeps: lowest ``val_nll``, then the smaller ``smooth_head``,
    then the smaller ``smooth_tail`` (a NaN NLL counts as infinite)."""
    if not records:
        raise ValueError('no candidate to choose from')
    return min(range(len(records)), key=lambda i: _key(records[i]))


def _validation_report(model: torch.nn.Module, val: DecodedSplit, data: Any, cfg: TrainConfig,
                       accelerator) -> Dict[str, Any]:
    """The report of the folded model (what would be saved) on the validation split, gathered over the
    processes, so that every process sees the same numbers and makes the same choice."""
    return evaluate(fold_head(model), val, class_counts=data.class_counts, rank_split=cfg.groups.rank_split,
                    batch_size=cfg.data.eval_batch_size, num_workers=cfg.data.num_workers, accelerator=accelerator)


def select_smoothing(cfg: TrainConfig, data: Any,
                     train_candidate: Callable[[TrainConfig, str], torch.nn.Module],
                     accelerator=None) -> Tuple[torch.nn.Module, TrainConfig]:
    """Train stage 2 once per ``cfg.stage2.smoothing_candidates`` pair and keep the one :data:`RULE` picks.

    ``train_candidate(candidate_cfg, checkpoint_name)`` trains one candidate (the config with that pair as
    ``smooth_head`` / ``smooth_tail``) and returns the trained stage-2 model with ``mislas_train_time_s``.
    ``data``: the run's :class:`~mislas_timm.training.TrainData` (its ``val`` split scores the candidates;
    the test split is not read). Returns (the chosen stage-2 model, the config it was trained with); the
    model carries the selection record as ``mislas_stage2_selection`` and the summed training time."""
    candidates = cfg.stage2.smoothing_candidates
    check_validation(cfg, data.val)
    val = DecodedSplit(data.val, 'validation', image_column=data.image_column, label_column=data.label_column,
                       dataset_name=data.meta.get('dataset'))
    records: List[Dict[str, Any]] = []
    chosen: Optional[torch.nn.Module] = None
    total_time = 0.0
    for i, (head, tail) in enumerate(candidates):
        name = candidate_checkpoint(i)
        logger.info('stage 2 smoothing candidate %d/%d: smooth_head %g, smooth_tail %g (checkpoint %s)', i + 1,
                    len(candidates), head, tail, name)
        model = train_candidate(with_smoothing(cfg, head, tail), name)
        report = _validation_report(model, val, data, cfg, accelerator)
        train_time = float(getattr(model, 'mislas_train_time_s', 0.0))
        total_time += train_time
        records.append({'smooth_head': float(head), 'smooth_tail': float(tail), 'val_top1': report['top1'],
                        'val_ece': report['ece'], 'val_nll': report['nll'], 'train_time_s': round(train_time, 1)})
        logger.info('stage 2 smoothing candidate %d/%d (smooth_head %g, smooth_tail %g): validation top-1 %.2f%%, '
                    'ECE %.2f%%, NLL %.4f (%d images)', i + 1, len(candidates), head, tail, 100 * report['top1'],
                    100 * report['ece'], report['nll'], len(val))
        if choose(records) == i:
            chosen = model  # only the best so far stays in memory
        del model
    best = choose(records)
    pick = records[best]
    logger.info('stage 2 smoothing: chose smooth_head %g, smooth_tail %g (candidate %d/%d, validation NLL %.4f, the '
                'lowest of %d; ties: the smaller eps_1)', pick['smooth_head'], pick['smooth_tail'], best + 1,
                len(records), pick['val_nll'], len(records))
    chosen.mislas_train_time_s = total_time
    chosen.mislas_stage2_selection = {
        'criterion': CRITERION, 'rule': RULE, 'split': 'validation', 'num_samples': len(val), 'candidates': records,
        'chosen': {'index': best, 'smooth_head': pick['smooth_head'], 'smooth_tail': pick['smooth_tail']}}
    return chosen, with_smoothing(cfg, pick['smooth_head'], pick['smooth_tail'])


def recorded_recipe(mislas: Dict[str, Any], saved: Dict[str, Any]) -> Dict[str, Any]:
    """A finished stage 2's recorded settings (``saved``, in :func:`mislas_timm.training.stage_recipe`'s keys)
    as a resume compares them: after a selection, its smooth_head / smooth_tail were chosen, not configured,
    so the candidates take their place."""
    selection = mislas.get('stage2_selection')
    if not selection:
        return saved
    saved = {k: v for k, v in saved.items() if k not in ('stage2.smooth_head', 'stage2.smooth_tail')}
    saved['stage2.smoothing_candidates'] = [[c['smooth_head'], c['smooth_tail']] for c in selection['candidates']]
    return saved
