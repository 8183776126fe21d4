"""Two-stage MiSLAS training with Accelerate (the logic behind ``train.py``).

Stage 1: instance-balanced sampling, cross-entropy with mixup. Stage 2: ``to_stage2`` (frozen
backbone, MiSLAS / LWS / cRT head, optional shift-BN), class-balanced sampling, label-aware
smoothing, classifier at ``lr * lr_factor``; each epoch is ceil(N / batch) + 1 steps as in the
reference loop. Models are never selected on the test set: each stage reports its last epoch.

Run folder: ``OUT/stage1/`` and ``OUT/stage2/`` (Hub folders), ``OUT/checkpoints/`` (one
complete Accelerate state per stage, written to a temporary folder and renamed), ``OUT/train.log``.
The per-epoch randomness (sampler order, augmentation, mixup) is seeded by (seed, stage, epoch,
rank), so a resumed run repeats the uninterrupted one exactly.

The package, one module per concept (every module logs to ``mislas_timm.train``, the run's train.log):

- :mod:`.data`: :class:`TrainData`, :func:`load_data` and the training view a stage reads;
- :mod:`.model`: :func:`build_model` (stage 1's timm model, ``model.init``, the run's preprocessing);
- :mod:`.checkpoints`: :class:`Checkpointer`, progress.json readers, recovery, the resume checks;
- :mod:`.progress`: :class:`StageProgress` (tqdm bar or log lines with the stage's ETA);
- :mod:`.loop`: :class:`StageSpec`, the shared loop, loss checks, lr schedule, the stage builders;
- :mod:`.run`: :func:`run_training`, the runtime choices, logging set-up.

Every name of the former single module ``mislas_timm/training.py`` is re-exported here. Functions call
each other inside their own submodules: to replace one (a test), patch it where it is defined
(``mislas_timm.training.loop._train_stage``), not here; class attributes (``Checkpointer.save``) reach
every user either way.
"""
from .checkpoints import (_CARD_RECIPE_KEYS, _RESUME_MAY_CHANGE, Checkpointer, _checkpoint_epoch, _checkpoint_folders,
                          _differences_message, _finished_stage_recipe, _newest_complete, _newest_progress,
                          _pinned_differs, _read_progress, _recipe_differences, _shown, _stage_done, check_resumable,
                          check_resume_settings, check_same_recipe, checkpoint_exists, recover_checkpoint,
                          stage_recipe)
from .data import (DECODE_CHECK_PIXELS, TrainData, _check_images_decode, _load_raw_splits, _no_empty_class,
                   _training_view, load_data)
from .loop import (BAD_START_FACTOR, DIVERGENCE_FACTOR, StageSpec, TrainingError, _freeze_except, _per_process_batch,
                   _precise_bn, _seed_for, _stage1, _stage1_summary, _stage2, _train_stage, loss_problem,
                   lr_multiplier, start_problem)
from .model import _apply_data_cfg, _check_arch, build_model
from .progress import StageProgress, _duration
from .run import (_check_init, _finish_stage, _resolve_runtime, _setup_logging, _stage_meta, check_output_dir, logger,
                  run_training)

__all__ = ['TrainingError', 'TrainData', 'load_data', 'build_model', 'lr_multiplier', 'loss_problem', 'run_training',
           'StageProgress']
