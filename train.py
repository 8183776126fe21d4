#!/usr/bin/env python
"""Two-stage MiSLAS training: a thin wrapper of ``python -m mislas_timm.train`` (same flags, see --help).

    python train.py --preset cifar10-lt-if100-cpu --dataset ../shared/datasets/cifar10 --output-dir runs/c10
    accelerate launch --multi_gpu --num_processes 4 train.py --preset cifar100-lt-if100 --output-dir runs/c100
"""
import sys

from mislas_timm.train import build_config, main, parse_args  # noqa: F401  (scripts and tests import them from here)

if __name__ == '__main__':
    sys.exit(main())
