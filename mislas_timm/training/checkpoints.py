"""Checkpoints and resume: one complete Accelerate state per stage under ``OUT/checkpoints``
(:class:`Checkpointer`), its ``progress.json`` readers, recovery from a kill inside the rotation, and the
checks that refuse a resume under another recipe or with choices its checkpoint cannot load."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config import ConfigError, TrainConfig
from ..hub import write_json_atomic
from ..runtime import RuntimeChoices, load_pinned, save_pinned
from ..stage2_selection import recorded_recipe

__all__ = ['Checkpointer', 'checkpoint_exists', 'recover_checkpoint', 'stage_recipe', 'check_same_recipe',
           'check_resume_settings', 'check_resumable']


def _stage_done(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ('config.json', 'model.safetensors', 'metrics.json'))


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
    the model it started from, ``model.init``, and its weights' ``model.init_sha256``, which wins where both
    runs recorded it), plus which
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
    # The weights a run started from are named by their sha256 where both recorded it: the same file spelled
    # another way (a relative path, a zoo tag for a folder holding it) is the same start.
    sha = (saved or {}).get('model.init_sha256')
    if sha and sha == current.get('model.init_sha256') and 'model.init' in changed:
        changed.remove('model.init')
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
