"""Alias of :mod:`mislas_timm.cli.calibrate`, kept for the documented command.

    python -m mislas_timm.calibrate SOURCE --method {temperature,tau_norm,logit_adjust} --dataset D --out DIR

stays supported and is exactly ``python -m mislas_timm.cli.calibrate``: same arguments, output,
files and exit codes, no warning. The code moved: the command line to ``mislas_timm/cli/calibrate.py``;
the fit on a model's held-out validation split (``fit_on_validation``, ``validation_indices``,
``require_validation_record``, ``warn_encodings``, ``CalibrationError``) to
``mislas_timm/calibration.py``, next to the methods it fits.

Deprecated: importing names from this module (``from mislas_timm.calibrate import fit_on_validation``)
still works but warns (DeprecationWarning); import them from their new home instead.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any

# the names this module defined before the move -> the module that holds them now
_MOVED = {
    'main': 'mislas_timm.cli.calibrate', 'METHOD_NAMES': 'mislas_timm.cli.calibrate',
    'CalibrationError': 'mislas_timm.calibration', 'require_validation_record': 'mislas_timm.calibration',
    'validation_indices': 'mislas_timm.calibration', 'warn_encodings': 'mislas_timm.calibration',
    'fit_on_validation': 'mislas_timm.calibration',
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    from . import calibration
    from .cli import calibrate as cli

    home = _MOVED[name]
    warnings.warn(f'mislas_timm.calibrate.{name} moved to {home}.{name}; import it from there '
                  '(python -m mislas_timm.calibrate stays supported)', DeprecationWarning, stacklevel=2)
    return getattr(cli if home == 'mislas_timm.cli.calibrate' else calibration, name)


if __name__ == '__main__':
    from mislas_timm.cli.calibrate import main as _main

    sys.exit(_main())
