"""The package's command lines: each one lives in this package or is listed here.

A command-line module parses arguments, prints messages (bad input: one line, exit code 2) and writes
files; the work it starts is done by the logic module named beside it, which knows nothing of
command lines (nothing in the package imports ``mislas_timm.cli``; the alias modules below aside).

Command (where its command line lives; where its logic lives):

- ``python -m mislas_timm.evaluate SOURCE --dataset D``: ``mislas_timm/cli/evaluate.py``;
  ``mislas_timm/evaluation.py``.
- ``python -m mislas_timm.calibrate SOURCE --method M --dataset D --out DIR``:
  ``mislas_timm/cli/calibrate.py``; ``mislas_timm/calibration.py`` (``fit_on_validation``).
- ``python -m mislas_timm.train`` (= ``train.py``): ``mislas_timm/train.py``; ``mislas_timm/training/``.
- ``python -m mislas_timm.demo`` (= ``app.py``): ``mislas_timm/demo.py`` (``main``); the same module.
- ``python -m mislas_timm.zoo`` (table, ``--verify``, ``build``, ``seeds``): ``mislas_timm/zoo.py``
  (``main``); the same module.
- ``python -m mislas_timm.hub`` (``check``, ``card``, ``push``): ``mislas_timm/hub/__main__.py``;
  ``mislas_timm/hub/``.
- ``python -m mislas_timm.convert CKPT OUT_DIR``: ``mislas_timm/convert.py`` (``main``); the same module.

``python -m mislas_timm.evaluate`` and ``python -m mislas_timm.calibrate`` are the documented commands
(DESIGN.md section 7) and stay supported: ``mislas_timm/evaluate.py`` and ``mislas_timm/calibrate.py``
are thin aliases that run ``mislas_timm.cli.evaluate`` / ``mislas_timm.cli.calibrate`` with the same
output and exit codes; ``python -m mislas_timm.cli.evaluate`` and ``python -m mislas_timm.cli.calibrate``
are the same commands. Importing names from the alias modules still works, with a DeprecationWarning
naming their new home.

This file imports nothing, so that ``python -m mislas_timm.cli.NAME`` runs NAME once, as ``__main__``.
"""
