"""The training loop shared by both stages (:func:`_train_stage`), the checks that stop it (NaN / diverged
loss, a broken start), the lr schedule, and the stage-1 / stage-2 builders (:class:`StageSpec`)."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import ConfigError, StageConfig, TrainConfig
from ..data.sampler import ClassAwareSampler, InstanceSampler, worker_generator
from ..losses import BalancedSoftmaxCrossEntropy, LabelAwareSmoothing, mixup_batch, mixup_cross_entropy
from ..precise_bn import precise_bn_batches, recompute_bn_stats, tracking_bn_layers
from ..runtime import RuntimeChoices
from ..stage2 import head_parameter_groups, to_stage2
from .checkpoints import Checkpointer, _newest_progress, check_same_recipe, stage_recipe
from .data import TrainData, _training_view
from .model import build_model
from .progress import StageProgress

__all__ = ['TrainingError', 'StageSpec', 'lr_multiplier', 'loss_problem', 'start_problem', 'DIVERGENCE_FACTOR',
           'BAD_START_FACTOR']

logger = logging.getLogger('mislas_timm.train')  # one training log (OUT/train.log) for the whole package


class TrainingError(RuntimeError):
    """A training run stopped for a reason the user can act on (message names it)."""


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
