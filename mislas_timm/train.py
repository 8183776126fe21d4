"""Two-stage MiSLAS training on Hugging Face data sets.

    python train.py --preset cifar10-lt-if100-cpu --dataset ../shared/datasets/cifar10 --output-dir runs/c10
    python train.py --preset finetune --init resnet32_cifar.cifar10_lt_if100_mislas --dataset DATA --output-dir runs/ft
    accelerate launch --multi_gpu --num_processes 4 -m mislas_timm.train --preset cifar100-lt-if100 --output-dir runs/c100

python -m mislas_timm.train is train.py (it ships with the package: a wheel install and
accelerate launch -m mislas_timm.train have it). Argument parsing and wiring only; the training logic
lives in mislas_timm.training.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config import (ConfigError, TrainConfig, apply_overrides, list_presets, load_config_file, load_preset,
                     parse_config, set_value)

__all__ = ['parse_args', 'build_config', 'main']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='train.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument('--preset', help=f'a shipped preset: {", ".join(list_presets())}')
    src.add_argument('--config', help='a YAML config file (may name a shipped preset as `base`)')
    p.add_argument('--dataset', help='Hub id or local folder (parquet files, save_to_disk, image folder); '
                                     'default: the preset\'s')
    p.add_argument('--output-dir', required=True, help='run folder: stage1/, stage2/, checkpoints/, train.log')
    p.add_argument('--stage', choices=['1', '2', 'all'], default='all', help='which stages to run (default: all)')
    p.add_argument('--epochs', type=int, help='stage-1 epochs (overrides the preset)')
    p.add_argument('--stage2-epochs', type=int, help='stage-2 epochs (overrides the preset)')
    p.add_argument('--init', help='the model the run starts from (config key model.init): with --stage 1 / all the '
                                  'weights stage 1 fine-tunes (classifier re-initialised when the classes differ), '
                                  'with --stage 2 the stage-1 model; a zoo tag, a run or Hub folder, local-dir:PATH, '
                                  'hf-hub:ORG/NAME or a timm pretrained name (resnet50.a1_in1k). The architecture '
                                  'is the source\'s')
    p.add_argument('--resume', action='store_true', help='continue the run in --output-dir from its last complete epoch')
    p.add_argument('--seed', type=int, help='training seed (default: the preset\'s, 0)')
    p.add_argument('--data-seed', type=int, help='seed of the long-tail subset (default 0; independent of --seed)')
    p.add_argument('--model', help='any timm model name (overrides the preset\'s architecture; with --preset finetune '
                                   'and no --init: the same recipe from scratch)')
    p.add_argument('--image-column', help='image column of the data set (default: img / image / ...)')
    p.add_argument('--label-column', help='label column of the data set (default: the preset\'s)')
    p.add_argument('--data-root', help='large sets: folder the split lists\' image paths are relative to')
    p.add_argument('--train-list', help='large sets: training split list ("path label" per line)')
    p.add_argument('--test-list', help='large sets: test split list ("path label" per line)')
    p.add_argument('--val-list', help='large sets: validation split list ("path label" per line)')
    p.add_argument('--max-train-samples', type=int, help='smoke runs: keep at most N training images')
    p.add_argument('--max-eval-samples', type=int, help='smoke runs: evaluate on at most N test images')
    p.add_argument('--mixed-precision', choices=['auto', 'no', 'fp16', 'bf16'],
                   help='default auto: bf16 on GPUs with bf16 and on CPUs with native bf16 units (AMX / AVX512-BF16) '
                        'where a start-up measurement confirms it is faster, else fp32; this flag decides, also '
                        'under accelerate launch')
    p.add_argument('--channels-last', choices=['auto', 'true', 'false'],
                   help='memory format (default auto: channels-last for convolutional models)')
    p.add_argument('--compile', action='store_true', help='torch.compile the model (see BENCHMARKS.md)')
    p.add_argument('--cpu', action='store_true', help='force the CPU even when a GPU is present')
    p.add_argument('--report-to', choices=['tensorboard', 'wandb', 'all'],
                   help='experiment tracker via Accelerate, logs under OUT/logs '
                        '(tensorboard: pip install "mislas-timm[tensorboard]")')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='override any preset key, e.g. --set stage2.shift_bn=true (repeatable)')
    args = p.parse_args(argv)
    if not args.preset and not args.config:
        p.error('pass --preset NAME or --config FILE.yaml')
    return args


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Preset or --config file, then the flags, then --set; validated once (exit 2 on any problem).

    ``--init`` without ``--model`` takes the architecture from the source (``model.arch`` null); with both,
    the model ``--model`` names starts from the tensors it shares with the source."""
    cfg = load_preset(args.preset) if args.preset else load_config_file(args.config)
    flags = {
        'dataset.source': args.dataset, 'stage1.epochs': args.epochs, 'stage2.epochs': args.stage2_epochs,
        'seed': args.seed, 'model.arch': args.model, 'model.init': args.init, 'dataset.image_column': args.image_column,
        'dataset.label_column': args.label_column, 'dataset.data_root': args.data_root,
        'dataset.train_list': args.train_list, 'dataset.test_list': args.test_list,
        'dataset.val_list': args.val_list, 'runtime.mixed_precision': args.mixed_precision,
        'runtime.channels_last': None if args.channels_last is None else {'auto': 'auto', 'true': True,
                                                                         'false': False}[args.channels_last],
        'runtime.compile': True if args.compile else None,
    }
    if args.data_seed is not None:
        if not cfg.get('longtail'):
            raise ConfigError('--data-seed applies to long-tail views; this preset uses the data as it is')
        flags['longtail.data_seed'] = args.data_seed
    for key, value in flags.items():
        if value is not None:
            set_value(cfg, key, value)
    if args.init is not None and args.model is None:
        set_value(cfg, 'model.arch', None)  # the source's architecture, not the preset's
    if (cfg.get('model') or {}).get('trunk_weights') and (args.init is not None or args.stage == '2'):
        # A preset's trunk_weights (Places-LT) names stage 1's starting weights: an explicit --init wins, and a
        # --stage 2 run starts from OUT/stage1 (or --init), never from the preset's ImageNet trunk.
        set_value(cfg, 'model.trunk_weights', None)
    # --set last: an explicit --set wins over the flags.
    return parse_config(apply_overrides(cfg, args.overrides))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from .data.hf import DataError
    from .sources import SourceError
    from .training import TrainingError, run_training
    try:
        cfg = build_config(args)
        run_training(cfg, output_dir=args.output_dir, stage=args.stage, resume=args.resume,
                     report_to=args.report_to, cpu=args.cpu,
                     max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples)
    except (ConfigError, DataError, SourceError, TrainingError) as err:
        print(f'train.py: error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
