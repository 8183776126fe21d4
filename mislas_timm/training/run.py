"""A training run: checks before any work, the runtime choices, logging to ``OUT/train.log``, the
configured stages and their Hub folders (:func:`run_training`)."""
from __future__ import annotations

import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..config import ConfigError, TrainConfig, parse_config
from ..data.batch_augment import resolve_decode_once
from ..evaluation import evaluate
from ..hub import save_hub_folder
from ..initialization import load_source, resolve_start
from ..runtime import (RuntimeChoices, device_name, has_accelerator, load_pinned, precision_problem,
                       resolve_channels_last, resolve_mixed_precision)
from ..stage2 import fold_head
from ..stage2_selection import check_validation, select_smoothing, stage_checkpoints
from .checkpoints import _stage_done, check_resumable, check_resume_settings, checkpoint_exists
from .data import TrainData, load_data
from .loop import _per_process_batch, _stage1, _stage2
from .model import _apply_data_cfg, _check_arch

__all__ = ['run_training', 'check_output_dir']

logger = logging.getLogger('mislas_timm.train')  # one training log (OUT/train.log) for the whole package


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

    from ..trackers import check_report_to
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
