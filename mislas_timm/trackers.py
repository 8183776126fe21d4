"""Experiment trackers for ``--report-to``, checked before any work is spent.

Accelerate starts the trackers named by ``Accelerator(log_with=...)`` only where their package is
installed; otherwise it merely warns ("no supported trackers are currently installed") and the run logs
nowhere while looking as if it did. :func:`check_report_to` refuses such a run in one line that names
what to install, before data is read or a step is trained. TensorBoard is the optional extra
``mislas-timm[tensorboard]``; it writes its event files under ``OUT/logs/``.
"""
from __future__ import annotations

import importlib
from typing import List, Optional, Sequence

from .config import ConfigError

__all__ = ['REPORT_TO', 'check_report_to']

REPORT_TO = ('tensorboard', 'wandb', 'all')

# tracker: (its name for people, the modules Accelerate's tracker imports (any one will do; in its order),
#           the packages whose absence means "not installed", how to install it)
_TRACKERS = {
    'tensorboard': ('TensorBoard', ('torch.utils.tensorboard', 'tensorboardX'), ('tensorboard', 'tensorboardX'),
                    'pip install "mislas-timm[tensorboard]"'),
    'wandb': ('Weights & Biases', ('wandb',), ('wandb',), 'pip install wandb'),
}


def _import_error(modules: Sequence[str]) -> Optional[BaseException]:
    """None when one of ``modules`` imports, else the error of the first."""
    first: Optional[BaseException] = None
    for module in modules:
        try:
            importlib.import_module(module)
            return None
        except Exception as err:  # a broken install fails with more than ImportError (e.g. a protobuf mismatch)
            first = first or err
    return first


def _problem(tracker: str) -> Optional[str]:
    """Why ``tracker`` cannot start here, in words with the fix; None when it can."""
    label, modules, packages, install = _TRACKERS[tracker]
    err = _import_error(modules)
    if err is None:
        return None
    if isinstance(err, ModuleNotFoundError) and (err.name or '').split('.')[0] in packages:
        return f'{label} is not installed; {install}'
    # Installed but broken: say why, so that the fix (reinstall, a version pin) is visible.
    reason = ' '.join(f'{type(err).__name__}: {err}'.split())
    return f'{label} is installed but does not import ({reason}); reinstall it: {install}'


def _accelerate_trackers() -> List[str]:
    """The trackers ``log_with='all'`` starts: every one Accelerate finds installed."""
    from accelerate.tracking import get_available_trackers

    return [str(getattr(t, 'value', t)) for t in get_available_trackers()]


def check_report_to(report_to: Optional[str]) -> None:
    """Refuse ``--report-to`` (``tensorboard``, ``wandb`` or ``all``) in one line when its tracker
    cannot start here; None (no tracker) passes. Raises :class:`~mislas_timm.config.ConfigError`."""
    if report_to is None:
        return
    if report_to not in REPORT_TO:
        raise ConfigError(f'--report-to {report_to!r} is not supported; use one of {", ".join(REPORT_TO)}')
    if report_to == 'all':
        found = _accelerate_trackers()
        if not found:
            raise ConfigError(f'--report-to all: no experiment tracker is installed; '
                              f'{_TRACKERS["tensorboard"][3]} (or pip install wandb)')
        wanted = [t for t in found if t in _TRACKERS]  # others (mlflow, ...) are Accelerate's to start
    else:
        wanted = [report_to]
    for tracker in wanted:
        problem = _problem(tracker)
        if problem:
            raise ConfigError(f'--report-to {report_to}: {problem}')
