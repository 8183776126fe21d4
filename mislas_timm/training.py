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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .config import ConfigError
from .data.batch_augment import BatchCropFlip, DecodedImages
from .data.hf import (DataError, ImageClassificationView, build_train_transform, dataset_from_split_list,
                      label_names as dataset_label_names, labels_of, load_split, resolve_columns)
from .data.longtail import class_counts as count_classes, longtail_counts, longtail_indices, split_sha256
from .data.sampler import ClassAwareSampler, InstanceSampler, worker_generator
from .evaluation import evaluate
from .hub import HubError, load_model, save_hub_folder, write_json_atomic
from .losses import LabelAwareSmoothing, mixup_batch, mixup_cross_entropy
from .stage2 import fold_head, head_parameter_groups, to_stage2

__all__ = ['TrainingError', 'TrainData', 'load_data', 'build_model', 'lr_multiplier', 'run_training']

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


def _load_raw_splits(cfg: Dict[str, Any]):
    d = cfg['dataset']
    if d.get('train_list') or d.get('test_list'):
        if not (d.get('train_list') and d.get('test_list') and d.get('data_root')):
            raise DataError('split lists need all of --data-root, --train-list and --test-list')
        return (dataset_from_split_list(d['data_root'], d['train_list']),
                dataset_from_split_list(d['data_root'], d['test_list']))
    if not d.get('source'):
        raise DataError(f'preset {cfg.get("preset")!r} has no default data set: pass --dataset, or '
                        '--data-root with --train-list / --test-list')
    return load_split(d['source'], d['train_split']), load_split(d['source'], d['test_split'])


def load_data(cfg: Dict[str, Any], max_train_samples: Optional[int] = None,
              max_eval_samples: Optional[int] = None) -> TrainData:
    """The training view (long-tailed if the preset asks) and the test split of the configured data."""
    d = cfg['dataset']
    train, test = _load_raw_splits(cfg)
    image_column, label_column = resolve_columns(train, d.get('image_column'), d.get('label_column'))
    resolve_columns(test, image_column, label_column)
    names = dataset_label_names(train, label_column)
    labels = labels_of(train, label_column)
    num_classes = len(names) if names else max(labels) + 1
    expected = d.get('num_classes')
    if expected and num_classes != expected:
        raise DataError(f'the data set has {num_classes} classes in column {label_column!r} but preset '
                        f'{cfg.get("preset")!r} expects {expected}; pass the matching --dataset / --label-column '
                        f'or --set dataset.num_classes={num_classes}')
    names = names or [str(i) for i in range(num_classes)]
    lt = cfg.get('longtail')
    meta: Dict[str, Any] = {'imb_factor': None, 'data_seed': None, 'profile': None}
    if lt:
        full_counts = count_classes(labels, num_classes)
        n_max = lt.get('n_max') or max(full_counts)
        counts = longtail_counts(n_max, num_classes, lt['imb_factor'], lt.get('profile', 'exp'))
        kept = longtail_indices(labels, counts, lt.get('data_seed', 0))
        meta.update(imb_factor=lt['imb_factor'], data_seed=lt.get('data_seed', 0), profile=lt.get('profile', 'exp'))
    else:
        kept = np.arange(len(labels))
    if max_train_samples and max_train_samples < len(kept):
        rng = np.random.RandomState(lt.get('data_seed', 0) if lt else 0)
        kept = np.sort(rng.permutation(kept)[:max_train_samples])
    meta['split_sha256'] = split_sha256(kept)
    train = train.select(kept.tolist()) if len(kept) != len(labels) else train
    train_labels = [labels[i] for i in kept.tolist()]
    counts = count_classes(train_labels, num_classes)
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(f'classes {empty[:10]} have no training images after the long-tail view / '
                        '--max-train-samples; raise --max-train-samples or lower the imbalance factor')
    if max_eval_samples and max_eval_samples < len(test):
        test = test.select(range(max_eval_samples))
    test_labels = labels_of(test, label_column)
    if test_labels and max(test_labels) >= num_classes:
        raise DataError(f'the test split has label {max(test_labels)} but the training split only {num_classes} classes')
    meta.update(class_counts=counts, rank_split=(cfg.get('groups') or {}).get('rank_split'),
                dataset=str(d.get('source') or d.get('train_list')), num_train=len(train_labels))
    return TrainData(train, test, image_column, label_column, num_classes, names, counts, train_labels, meta)


def build_model(cfg: Dict[str, Any], num_classes: int, label_names: List[str]) -> torch.nn.Module:
    """The preset's timm model with num_classes and the preset's preprocessing in its pretrained_cfg."""
    import timm

    m = cfg['model']
    if not timm.is_model(m['arch']):
        raise ConfigError(f'unknown model {m["arch"]!r}: not a timm model name (see timm.list_models())')
    model = timm.create_model(m['arch'], pretrained=bool(m.get('pretrained')), num_classes=num_classes,
                              **(m.get('kwargs') or {}))
    if m.get('trunk_weights'):
        _load_trunk(model, m['trunk_weights'])
    _apply_data_cfg(model, cfg, label_names)
    return model


def _load_trunk(model: torch.nn.Module, source: str) -> None:
    """Initialise the shared layers from another (pretrained) timm model, e.g. Places-LT's ResNet-152
    trunk from ImageNet weights; the classifier and layers the source lacks keep their init."""
    import timm

    own = model.state_dict()
    src = {k: v for k, v in timm.create_model(source, pretrained=True).state_dict().items()
           if k in own and own[k].shape == v.shape and not k.startswith('fc.')}
    if not src:
        raise ConfigError(f'model.trunk_weights {source!r} shares no layer with {type(model).__name__}')
    model.load_state_dict(src, strict=False)
    logger.info('initialised %d tensors from %s', len(src), source)


def _apply_data_cfg(model: torch.nn.Module, cfg: Dict[str, Any], label_names: List[str]) -> None:
    data = cfg['data']
    pretrained_cfg = dict(model.pretrained_cfg)
    for key in ('input_size', 'mean', 'std', 'crop_pct'):
        if data.get(key) is not None:
            pretrained_cfg[key] = tuple(data[key]) if isinstance(data[key], list) else data[key]
    pretrained_cfg['label_names'] = list(label_names)
    pretrained_cfg['num_classes'] = len(label_names)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg


def lr_multiplier(epoch: int, stage_cfg: Dict[str, Any]) -> float:
    """Learning-rate factor of an epoch (0-based), per epoch as the reference.

    Linear warm-up: (epoch + 1) / warmup_epochs for epoch < warmup_epochs. Then
    ``step``: gamma ** (number of milestones m with epoch + 1 > m);
    ``cosine``: 0.5 * (1 + cos(pi * (epoch - warmup_epochs) / (epochs - warmup_epochs))).
    """
    warmup = int(stage_cfg.get('warmup_epochs') or 0)
    if epoch < warmup:
        return (epoch + 1) / warmup
    schedule = stage_cfg.get('schedule', 'cosine')
    if schedule == 'step':
        passed = sum(1 for m in stage_cfg.get('milestones') or [] if epoch + 1 > m)
        return float(stage_cfg.get('gamma', 0.1)) ** passed
    if schedule == 'cosine':
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / max(stage_cfg['epochs'] - warmup, 1)))
    raise ConfigError(f'unknown schedule {schedule!r}; use step or cosine')


class Checkpointer:
    """One complete Accelerate state per stage under OUT/checkpoints, replaced atomically each epoch."""

    def __init__(self, root: Path, stage: str, accelerator):
        self.root = root
        self.stage = stage
        self.accelerator = accelerator

    @property
    def path(self) -> Path:
        return self.root / self.stage

    def latest_epoch(self) -> Optional[int]:
        done = self.path / 'progress.json'
        if not done.is_file():
            return None
        return int(json.loads(done.read_text())['epoch'])

    def save(self, epoch: int) -> None:
        acc = self.accelerator
        tmp = self.root / f'.{self.stage}.tmp'
        if acc.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json_atomic(tmp / 'progress.json', {'stage': self.stage, 'epoch': epoch})
            old = self.root / f'.{self.stage}.old'
            if self.path.exists():
                os.replace(self.path, old)
            os.replace(tmp, self.path)
            if old.exists():
                shutil.rmtree(old)
        acc.wait_for_everyone()

    def restore(self) -> int:
        """Load the last complete state; return the first epoch still to run."""
        epoch = self.latest_epoch()
        if epoch is None:
            return 0
        self.accelerator.load_state(str(self.path))
        return epoch + 1


def _seed_for(seed: int, *parts: int) -> int:
    return int(np.random.RandomState([seed, *parts]).randint(2 ** 31))


@dataclass
class StageSpec:
    """What differs between the two stages; the loop in :func:`_train_stage` is shared."""
    name: str
    index: int
    model: torch.nn.Module
    param_groups: List[Dict[str, Any]]
    stage_cfg: Dict[str, Any]
    sampler: Any
    steps_per_epoch: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    mixup_alpha: float = 0.0


def _train_stage(accelerator, spec: StageSpec, data: TrainData, cfg: Dict[str, Any], out: Path,
                 resume: bool) -> torch.nn.Module:
    sc = spec.stage_cfg
    seed = int(cfg.get('seed', 0))
    optimizer = torch.optim.SGD(spec.param_groups, lr=sc['lr'], momentum=sc['momentum'],
                                weight_decay=sc['weight_decay'])
    # One stage's state per checkpoint: forget the previous stage's model and optimizer, so that a
    # resumed stage 2 (without a stage 1 in this process) finds its own state as "model 0".
    accelerator.free_memory()
    model, optimizer = accelerator.prepare(spec.model, optimizer)
    checkpointer = Checkpointer(out / 'checkpoints', spec.name, accelerator)
    configured_lrs = [group['initial_lr'] for group in spec.param_groups]
    start_epoch = checkpointer.restore() if resume else 0
    # The restored optimizer carries the old run's lrs; the config (e.g. a lowered --set lr) wins.
    for group, lr in zip(optimizer.param_groups, configured_lrs):
        group['initial_lr'] = lr
    if start_epoch:
        logger.info('%s: resumed after epoch %d from %s', spec.name, start_epoch, checkpointer.path)
    view, batch_transform = _training_view(cfg, data, accelerator.unwrap_model(model).pretrained_cfg)
    per_process_batch = _per_process_batch(sc['batch_size'], accelerator.num_processes)
    rank = accelerator.process_index
    for epoch in range(start_epoch, sc['epochs']):
        multiplier = lr_multiplier(epoch, sc)
        for group in optimizer.param_groups:
            group['lr'] = group['initial_lr'] * multiplier
        spec.sampler.set_epoch(epoch)
        torch.manual_seed(_seed_for(seed, spec.index, epoch, rank))
        mix_rng = np.random.default_rng([seed, spec.index, epoch, rank])
        loader = DataLoader(view, batch_size=per_process_batch, sampler=spec.sampler,
                            num_workers=int(cfg['data'].get('num_workers') or 0),
                            generator=worker_generator(seed, epoch, rank),
                            persistent_workers=False, pin_memory=torch.cuda.is_available())
        model.train()
        seen, loss_sum, start = 0, 0.0, time.perf_counter()
        progress = _progress(accelerator, spec, epoch, min(len(loader), spec.steps_per_epoch))
        for step, (images, targets) in enumerate(loader):
            if step >= spec.steps_per_epoch:
                break
            images = images.to(accelerator.device, non_blocking=True)
            targets = targets.to(accelerator.device, non_blocking=True)
            if batch_transform is not None:
                images = batch_transform(images)
            with accelerator.autocast():
                if spec.mixup_alpha > 0:
                    mixed, y_a, y_b, lam = mixup_batch(images, targets, spec.mixup_alpha, mix_rng)
                    loss = mixup_cross_entropy(model(mixed).float(), y_a, y_b, lam)
                else:
                    loss = spec.loss_fn(model(images).float(), targets)
            if not bool(torch.isfinite(loss.detach())):
                last = checkpointer.latest_epoch()
                where = f'{checkpointer.path} (after epoch {last})' if last is not None else 'none yet'
                raise TrainingError(f'{spec.name}: loss is {float(loss.detach())} at epoch {epoch} step {step}; stopped. '
                                    f'Last good checkpoint: {where}. Lower the lr (--set {spec.name}.lr=...) and '
                                    'rerun with --resume')
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            seen += images.shape[0]
            loss_sum += float(loss.detach()) * images.shape[0]
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f'{loss_sum / seen:.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.4g}',
                                     img_s=f'{seen * accelerator.num_processes / (time.perf_counter() - start):.0f}')
        if progress is not None:
            progress.close()
        elapsed = time.perf_counter() - start
        logger.info('%s epoch %d/%d: loss %.4f, lr %.5f, %.1f images/s (%d images, %.1f s)', spec.name, epoch + 1,
                    sc['epochs'], loss_sum / max(seen, 1), optimizer.param_groups[0]['lr'],
                    seen * accelerator.num_processes / elapsed, seen * accelerator.num_processes, elapsed)
        accelerator.log({f'{spec.name}/loss': loss_sum / max(seen, 1), f'{spec.name}/lr': optimizer.param_groups[0]['lr'],
                         f'{spec.name}/images_per_s': seen * accelerator.num_processes / elapsed}, step=epoch)
        checkpointer.save(epoch)
    return accelerator.unwrap_model(model)


def _training_view(cfg: Dict[str, Any], data: TrainData, pretrained_cfg: Dict[str, Any]):
    """The training data set and, for ``data.decode_once``, the batch augmentation to run on the device."""
    d = cfg['data']
    kwargs = d.get('train_transform_kwargs') or {}
    in_chans = int(pretrained_cfg['input_size'][0])
    if not d.get('decode_once'):
        transform = build_train_transform(d['train_transform'], pretrained_cfg, **kwargs)
        return ImageClassificationView(data.train, data.image_column, data.label_column, transform, in_chans), None
    if d['train_transform'] != 'cifar':
        raise ConfigError(f'data.decode_once supports train_transform cifar only, not {d["train_transform"]!r}; '
                          'set data.decode_once=false')
    view = DecodedImages(data.train, data.image_column, data.label_column, in_chans)
    size = tuple(view.pixels.shape[2:])
    if size != tuple(pretrained_cfg['input_size'][1:]):
        raise ConfigError(f'data.decode_once crops images to their own size {size}, but the model input is '
                          f'{tuple(pretrained_cfg["input_size"][1:])}; set data.decode_once=false')
    return view, BatchCropFlip(pretrained_cfg['mean'], pretrained_cfg['std'], padding=int(kwargs.get('padding', 4)))


def _progress(accelerator, spec: StageSpec, epoch: int, total: int):
    if not accelerator.is_local_main_process or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=f'{spec.name} {epoch + 1}/{spec.stage_cfg["epochs"]}', leave=False)


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


def _stage1(accelerator, cfg, data: TrainData, out: Path, resume: bool) -> torch.nn.Module:
    sc = cfg['stage1']
    torch.manual_seed(int(cfg.get('seed', 0)))
    model = build_model(cfg, data.num_classes, data.label_names)
    _freeze_except(model, sc.get('trainable'))
    params = [p for p in model.parameters() if p.requires_grad]
    sampler = InstanceSampler(len(data.train_labels), accelerator.num_processes, accelerator.process_index,
                              seed=int(cfg.get('seed', 0)))
    steps = math.ceil(len(sampler) / _per_process_batch(sc['batch_size'], accelerator.num_processes))
    spec = StageSpec('stage1', 1, model, [{'params': params, 'initial_lr': sc['lr']}], sc, sampler, steps,
                     F.cross_entropy, mixup_alpha=float(sc.get('mixup_alpha') or 0.0))
    return _train_stage(accelerator, spec, data, cfg, out, resume)


def _stage2(accelerator, cfg, data: TrainData, stage1_model: torch.nn.Module, out: Path, resume: bool) -> torch.nn.Module:
    sc = cfg['stage2']
    torch.manual_seed(_seed_for(int(cfg.get('seed', 0)), 2))
    model = to_stage2(stage1_model, head=sc['head'], shift_bn=bool(sc['shift_bn']))
    groups = head_parameter_groups(model, sc['lr'], float(sc.get('lr_factor', 1.0)))
    if sc.get('loss', 'las') == 'las':
        loss_fn: Callable = LabelAwareSmoothing(data.class_counts, sc['smooth_head'], sc['smooth_tail'],
                                                shape=sc.get('las_shape', 'concave'), power=sc.get('las_power'),
                                                formulation=sc.get('las_formulation', 'official')).to(accelerator.device)
    elif sc.get('loss') == 'ce':
        loss_fn = F.cross_entropy
    else:
        raise ConfigError(f'stage2.loss must be las or ce, got {sc.get("loss")!r}')
    sampler = ClassAwareSampler(data.train_labels, samples_per_class=int(sc.get('samples_per_class', 4)),
                                num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                                seed=_seed_for(int(cfg.get('seed', 0)), 2))
    # The reference loop ends a stage-2 epoch after ceil(N / batch) + 1 batches, not n_max * K samples.
    steps = math.ceil(len(data.train_labels) / sc['batch_size']) + 1
    spec = StageSpec('stage2', 2, model, groups, sc, sampler, steps, loss_fn)
    return _train_stage(accelerator, spec, data, cfg, out, resume)


def _stage_meta(cfg: Dict[str, Any], data: TrainData, stage: int, command: str,
                stage1: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The config.json ``mislas`` block; a stage-2 model also records how its stage 1 was made."""
    sc = cfg[f'stage{stage}']
    recipe = {k: sc.get(k) for k in ('epochs', 'batch_size', 'lr', 'weight_decay', 'schedule', 'mixup_alpha',
                                      'head', 'shift_bn', 'lr_factor', 'loss', 'smooth_head', 'smooth_tail',
                                      'las_shape', 'las_formulation') if k in sc}
    meta = {**data.meta, 'preset': cfg.get('preset'), 'stage': stage, 'seed': cfg.get('seed', 0),
            'recipe': recipe, 'command': command}
    if stage1 is not None:
        meta['stage1'] = stage1
    return meta


def _finish_stage(accelerator, model: torch.nn.Module, cfg, data: TrainData, out: Path, stage: int,
                  command: str, stage1: Optional[Dict[str, Any]] = None) -> torch.nn.Module:
    """Evaluate on the test split (all processes, gathered) and write OUT/stage{N} (main process)."""
    folder = out / f'stage{stage}'
    meta = _stage_meta(cfg, data, stage, command, stage1)
    model.mislas_config = meta
    report = evaluate(model, data.test, split=cfg['dataset']['test_split'], image_column=data.image_column,
                      label_column=data.label_column, batch_size=int(cfg['data'].get('eval_batch_size', 256)),
                      num_workers=int(cfg['data'].get('num_workers') or 0), accelerator=accelerator,
                      dataset_name=meta['dataset'])
    if accelerator.is_main_process:
        save_hub_folder(model, folder, label_names=data.label_names, mislas=meta, metrics=report,
                        card_context={'title': f'{cfg["model"]["arch"]}, stage {stage} ({cfg.get("preset")})',
                                      'limitations': cfg.get('limitations')})
    accelerator.wait_for_everyone()
    logger.info('stage %d: top-1 %.2f%%, ECE %.2f%%, NLL %.4f -> %s', stage, 100 * report['top1'],
                100 * report['ece'], report['nll'], folder)
    return model


def _stage_done(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ('config.json', 'model.safetensors', 'metrics.json'))


def run_training(cfg: Dict[str, Any], *, output_dir: str, stage: str = 'all', init: Optional[str] = None,
                 resume: bool = False, mixed_precision: Optional[str] = None, report_to: Optional[str] = None,
                 max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
                 command: Optional[str] = None, cpu: bool = False) -> Dict[str, Path]:
    """Run the configured stages; return the written Hub folders."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out = Path(output_dir)
    if stage not in ('1', '2', 'all'):
        raise ConfigError(f'--stage must be 1, 2 or all, got {stage!r}')
    stages = ('1', '2') if stage == 'all' else (stage,)
    taken = [s for s in stages if (out / 'checkpoints' / f'stage{s}').exists() or _stage_done(out / f'stage{s}')]
    if not resume and taken:
        raise ConfigError(f'{out} already holds stage {taken[0]} of a run; pass --resume to continue it or choose '
                          'another --output-dir')
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with=report_to, cpu=cpu or not _has_accelerator(),
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / 'logs')))
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    _setup_logging(out / 'train.log', accelerator.is_main_process)
    command = command or ' '.join(shlex.quote(a) for a in sys.argv)
    logger.info('command: %s', command)
    logger.info('%d process(es), device %s, mixed precision %s', accelerator.num_processes, accelerator.device,
                accelerator.mixed_precision)
    if report_to:
        accelerator.init_trackers('mislas', config={'preset': cfg.get('preset')})
    data = load_data(cfg, max_train_samples, max_eval_samples)
    logger.info('data: %d training images in %d classes (counts %s), %d test images', len(data.train_labels),
                data.num_classes, data.class_counts, len(data.test))
    written: Dict[str, Path] = {}
    stage1_model = None
    if stage in ('1', 'all'):
        if resume and _stage_done(out / 'stage1'):
            logger.info('stage 1 already complete in %s', out / 'stage1')
        else:
            stage1_model = _stage1(accelerator, cfg, data, out, resume)
            _finish_stage(accelerator, stage1_model, cfg, data, out, 1, command)
        written['stage1'] = out / 'stage1'
    if stage in ('2', 'all'):
        source = init or str(out / 'stage1')
        if init is None and stage == '2' and not _stage_done(out / 'stage1'):
            raise ConfigError(f'--stage 2 needs a stage-1 model: pass --init SOURCE (or run stage 1 into {out})')
        if resume and _stage_done(out / 'stage2'):
            logger.info('stage 2 already complete in %s', out / 'stage2')
        else:
            if stage1_model is None or init is not None:
                try:
                    stage1_model = load_model(source)
                except HubError as err:
                    raise ConfigError(f'--init: {err}') from None
            if getattr(stage1_model, 'num_classes', None) != data.num_classes:
                raise ConfigError(f'--init model {source} has {getattr(stage1_model, "num_classes", "?")} classes but '
                                  f'the data has {data.num_classes}; pass a stage-1 model trained on this data set')
            _apply_data_cfg(stage1_model, cfg, data.label_names)
            stage2_model = _stage2(accelerator, cfg, data, stage1_model, out, resume)
            recorded = getattr(stage1_model, 'mislas_config', None) or {}
            stage1_info = {'source': source, 'command': recorded.get('command'), 'recipe': recorded.get('recipe')}
            _finish_stage(accelerator, fold_head(stage2_model), cfg, data, out, 2, command, stage1_info)
        written['stage2'] = out / 'stage2'
    if report_to:
        accelerator.end_training()
    return written


def _has_accelerator() -> bool:
    """A GPU-like device for Accelerate. Without one, Accelerate must be told cpu=True, or a
    ``--multi_gpu`` launch on a CPU-only machine starts independent single processes."""
    mps = getattr(torch.backends, 'mps', None)
    xpu = getattr(torch, 'xpu', None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


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
