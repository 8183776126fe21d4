"""Time the full calibration report on ImageNet-LT- and iNaturalist-sized probability matrices.

    python benchmarks/metrics_speed.py
"""
import time

import torch

from mislas_timm.metrics import calibration_report

SHAPES = {'ImageNet-LT test (50,000 x 1,000)': (50_000, 1_000, [390, 835]),
          'iNaturalist 2018 val (24,426 x 8,142)': (24_426, 8_142, None)}


def main() -> None:
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    for name, (n, k, split) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        probs = torch.randn(n, k, generator=g).mul(3).softmax(dim=1)
        labels = torch.randint(0, k, (n,), generator=g)
        counts = torch.randint(2, 1280, (k,), generator=g).tolist()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            calibration_report(probs, labels, counts, split)
            times.append(time.perf_counter() - start)
        times.sort()
        print(f'{name}: median {times[2]:.3f} s, min {times[0]:.3f} s over 5 runs')


if __name__ == '__main__':
    main()
