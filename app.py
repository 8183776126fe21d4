#!/usr/bin/env python
"""Gradio demo: MiSLAS confidence next to an over-confident baseline (default: the bundled CIFAR-10-LT models, offline).

    python app.py [--model SOURCE] [--baseline SOURCE] [--examples DIR] [--port N] [--share]

SOURCE: a zoo name, a run or Hub folder (RUN/stage2), local-dir:PATH or hf-hub:ORG/NAME. The same
command ships with the package as ``python -m mislas_timm.demo``; the logic lives in ``mislas_timm.demo``.
"""
import sys

from mislas_timm.demo import DEFAULT_MODEL, ZOO_BASELINES, main, share_reachable  # noqa: F401  (kept importable)

if __name__ == '__main__':
    sys.exit(main(prog='app.py'))
