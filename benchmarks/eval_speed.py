"""The evaluator's speed against a bare fp32 channels-last forward of the same model, in one process.

    python benchmarks/eval_speed.py --dataset /work/runs/datasets/cifar10-png [--model NAME_OR_FOLDER]
        [--rounds 3] [--batch-size 500] [--many 7]

Alternating rounds (so that warm-up and drift of a shared machine hit both alike), after one warm-up
of each:
- ``evaluate()``: the whole call ``evaluate(model, DATASET)`` from the data set's path to the report
  (reading the split, decoding, the forward pass, the metrics), timed from outside the call; the
  report's own ``wall_time_s`` is printed beside it;
- bare: the same model, a channels-last copy of it, on a fixed random batch of the same size, fp32,
  no grad, as many images as the split holds.
The evaluate / bare ratio is what reading, decoding and reporting cost on top of the model.
``--many N`` adds ``evaluate_many`` of N copies of the model (one read and decode of the split, as
``zoo --verify`` needs) against N separate ``evaluate`` calls. It prints the CPU and its threads;
run it with the thread count you report (e.g. ``OMP_NUM_THREADS=1`` on a shared machine).
"""
from __future__ import annotations

import argparse
import copy
import platform
import time
from typing import Callable, Dict, List

import numpy as np
import torch

import mislas_timm
from mislas_timm.evaluation import evaluate, evaluate_many
from mislas_timm.runtime import device_name


def bare_forward(model: torch.nn.Module, num_images: int, batch_size: int) -> Callable[[], float]:
    """A function running ``num_images`` images of random data through a channels-last copy of ``model``
    (fp32, no grad) and returning the seconds it took."""
    net = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    c, h, w = (int(v) for v in net.pretrained_cfg['input_size'])
    x = torch.randn(batch_size, c, h, w, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    sizes = [batch_size] * (num_images // batch_size) + ([num_images % batch_size] if num_images % batch_size else [])

    @torch.no_grad()
    def run() -> float:
        start = time.perf_counter()
        for n in sizes:
            net(x[:n])
        return time.perf_counter() - start

    return run


def measure(model: torch.nn.Module, dataset: str, rounds: int, batch_size: int) -> Dict[str, List[float]]:
    """images/s of the whole evaluate() call, of its reported wall time, and of the bare forward, per round."""
    first = evaluate(model, dataset, batch_size=batch_size)  # warm-up: the data set's cache, the allocator
    n = first['num_samples']
    bare = bare_forward(model, n, batch_size)
    bare()
    rates: Dict[str, List[float]] = {'call': [], 'reported': [], 'bare': [], 'top1': []}
    for _ in range(rounds):
        start = time.perf_counter()
        report = evaluate(model, dataset, batch_size=batch_size)
        rates['call'].append(n / (time.perf_counter() - start))
        rates['reported'].append(report['images_per_s'])
        rates['top1'].append(report['top1'])
        rates['bare'].append(n / bare())
    return rates


def measure_many(model: torch.nn.Module, dataset: str, copies: int, batch_size: int) -> Dict[str, float]:
    """Seconds of evaluate_many on ``copies`` copies of ``model`` against as many evaluate calls."""
    models = [copy.deepcopy(model) for _ in range(copies)]
    start = time.perf_counter()
    many = evaluate_many(models, dataset, batch_size=batch_size)
    many_s = time.perf_counter() - start
    start = time.perf_counter()
    each = [evaluate(m, dataset, batch_size=batch_size) for m in models]
    each_s = time.perf_counter() - start
    same = all(a['top1'] == b['top1'] and a['ece'] == b['ece'] for a, b in zip(many, each))
    return {'many_s': many_s, 'each_s': each_s, 'same': float(same), 'read_s': many[0]['read_time_s']}


def main(argv=None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', required=True, help='data set folder or Hub id (its test split is evaluated)')
    p.add_argument('--model', default='resnet32_cifar.cifar10_lt_if100_mislas', help='any model source')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--batch-size', type=int, default=500)
    p.add_argument('--many', type=int, default=0, help='also time evaluate_many on N copies against N evaluate calls')
    args = p.parse_args(argv)
    model = mislas_timm.load_model(args.model).eval()
    print(f'machine: {device_name()} ({platform.machine()}), torch {torch.__version__}, '
          f'threads {torch.get_num_threads()}, model {args.model}, batch {args.batch_size}, {args.rounds} rounds')
    rates = measure(model, args.dataset, args.rounds, args.batch_size)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    print('| what | images/s (median) | rounds |')
    print('|---|---|---|')
    print(f'| bare fp32 channels-last forward | {med["bare"]:.0f} | {", ".join(f"{v:.0f}" for v in rates["bare"])} |')
    print(f'| evaluate() call, timed outside | {med["call"]:.0f} | {", ".join(f"{v:.0f}" for v in rates["call"])} |')
    print(f'| evaluate() images_per_s (metrics.json) | {med["reported"]:.0f} | '
          f'{", ".join(f"{v:.0f}" for v in rates["reported"])} |')
    paired = [c / b for c, b in zip(rates['call'], rates['bare'])]  # each round measures both, back to back
    ratio = float(np.median(paired))
    print(f'evaluate / bare: {ratio:.2f} (median of the rounds\' ratios {", ".join(f"{r:.2f}" for r in paired)}; '
          f'ratio of the medians {med["call"] / med["bare"]:.2f}); top-1 {med["top1"]:.4f}')
    result = {'bare': med['bare'], 'call': med['call'], 'reported': med['reported'], 'ratio': ratio}
    if args.many:
        many = measure_many(model, args.dataset, args.many, args.batch_size)
        print(f'{args.many} models: evaluate_many {many["many_s"]:.1f} s (one read and decode: '
              f'{many["read_s"]:.1f} s) against {args.many} evaluate calls {many["each_s"]:.1f} s; '
              f'same top-1 / ECE: {bool(many["same"])}')
        result.update(many)
    return result


if __name__ == '__main__':
    main()
