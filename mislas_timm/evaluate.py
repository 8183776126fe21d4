"""Alias of :mod:`mislas_timm.cli.evaluate`, kept for the documented command.

    python -m mislas_timm.evaluate SOURCE --dataset PATH_OR_ID [--split test] [--out DIR]

stays supported (DESIGN.md section 7) and is exactly ``python -m mislas_timm.cli.evaluate``: same
arguments, output and exit codes, no warning. The code moved: the command line to
``mislas_timm/cli/evaluate.py``, the evaluation itself is ``mislas_timm/evaluation.py``.

Deprecated: importing names from this module (``from mislas_timm.evaluate import main``) still
works but warns (DeprecationWarning); import them from :mod:`mislas_timm.cli.evaluate` instead, and
the ``evaluate()`` function from :mod:`mislas_timm` or :mod:`mislas_timm.evaluation`.
"""
from __future__ import annotations

import sys
import types
import warnings
from typing import Any

# the names this module defined before the move, all in the command-line module now
_MOVED = ('main', 'format_shift_table', '_ratios', '_imbalance')


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    from .cli import evaluate as cli

    warnings.warn(f'mislas_timm.evaluate.{name} moved to mislas_timm.cli.evaluate.{name}; import it from there '
                  '(python -m mislas_timm.evaluate stays supported)', DeprecationWarning, stacklevel=2)
    return getattr(cli, name)


class _CallableAlias(types.ModuleType):
    """Importing this submodule (``from mislas_timm.evaluate import main``, ``python -m``) makes Python rebind
    the package attribute ``mislas_timm.evaluate``, the public ``evaluate()`` function, to this module; so
    the module is callable as that function and ``mislas_timm.evaluate(model, data)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .evaluation import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableAlias


if __name__ == '__main__':
    from mislas_timm.cli.evaluate import main as _main

    sys.exit(_main())
