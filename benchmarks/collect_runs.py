"""Markdown table of the CIFAR-10-LT CPU-budget runs, read from each run folder's metrics.json.

    python benchmarks/collect_runs.py RUNS_DIR
"""
import json
import sys
from pathlib import Path

ROWS = [  # (label, run folder relative to RUNS_DIR)
    ('stage 1: CE (no mixup)', 'c10lt-ce/stage1'),
    ('stage 1: mixup', 'c10lt-mixup/stage1'),
    ('cRT on CE stage 1', 'c10lt-ce-crt/stage2'),
    ('cRT on mixup stage 1', 'c10lt-mixup-crt/stage2'),
    ('LWS on mixup stage 1', 'c10lt-mixup-lws/stage2'),
    ('MiSLAS on CE stage 1', 'c10lt-ce/stage2'),
    ('MiSLAS (mixup stage 1 + LAS + MiSLAS head)', 'c10lt-mixup/stage2'),
    ('MiSLAS + shift-BN', 'c10lt-mixup-shiftbn/stage2'),
]
KEYS = ['top1', 'ece', 'mce', 'nll', 'brier', 'many_top1', 'medium_top1', 'few_top1', 'head_top1', 'med_top1',
        'tail_top1']


def fmt(key, value):
    if value is None:
        return '-'
    return f'{value:.3f}' if key in ('nll', 'brier') else f'{100 * value:.2f}'


def main() -> None:
    runs = Path(sys.argv[1])
    print('| run | top-1 | ECE | MCE | NLL | Brier | many | medium | few | head | med | tail |')
    print('|---|' + '---|' * len(KEYS))
    for label, rel in ROWS:
        path = runs / rel / 'metrics.json'
        if not path.is_file():
            print(f'| {label} | ' + ' | '.join(['not run'] * len(KEYS)) + ' |')
            continue
        m = json.loads(path.read_text())
        print(f'| {label} | ' + ' | '.join(fmt(k, m[k]) for k in KEYS) + ' |')


if __name__ == '__main__':
    main()
