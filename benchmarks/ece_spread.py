"""How far a model's test ECE is from noise: its calibrated floor.

    python benchmarks/ece_spread.py MODEL [MODEL ...] --dataset ../runs/datasets/cifar10-png

For each model (zoo name, folder, ``local-dir:`` or ``hf-hub:``), one fp32 pass over the test split,
then the **calibrated floor**: the ECE that a perfectly calibrated model with these confidences would
still get on this many images (consistency resampling, Vaicenavicius et al. 2019: each prediction is
made correct with probability equal to its confidence), mean and 95th percentile over
``--resamples`` draws (``--seed``). An ECE near the floor is noise; one above its 95th percentile is
miscalibration. Also accuracy against mean confidence (over- or under-confident overall).

No bootstrap interval over the test images: resampling with replacement adds binning noise, so the
ECE of a resampled test set is biased upwards and its percentile interval can miss the ECE itself.
"""
import argparse
import sys

import numpy as np
import torch

import mislas_timm
from mislas_timm.data.hf import load_split, resolve_columns
from mislas_timm.evaluation import eval_loader, predict
from mislas_timm.metrics import ece


def spread(probs: torch.Tensor, labels: torch.Tensor, resamples: int, seed: int) -> dict:
    """The 15-bin ECE of ``probs`` and its calibrated floor (fractions)."""
    conf, pred = probs.max(dim=1)
    n, k = probs.shape
    rng = np.random.default_rng(seed)
    floor = []
    for _ in range(resamples):
        correct = torch.from_numpy(rng.random(n) < conf.double().numpy())
        floor.append(ece(probs, torch.where(correct, pred, (pred + 1) % k)))  # any wrong label will do
    return {'top1': float((pred == labels).double().mean()), 'mean_confidence': float(conf.double().mean()),
            'ece': ece(probs, labels),
            'calibrated_floor_mean': float(np.mean(floor)), 'calibrated_floor_95': float(np.percentile(floor, 95))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('models', nargs='+')
    p.add_argument('--dataset', required=True)
    p.add_argument('--resamples', type=int, default=300)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--batch-size', type=int, default=500)
    args = p.parse_args(argv)
    ds = load_split(args.dataset, 'test')
    image_column, label_column = resolve_columns(ds, None, None)
    print('| model | top-1 | mean confidence | ECE | calibrated floor: mean / 95th percentile |')
    print('|---|---|---|---|---|')
    for name in args.models:
        model = mislas_timm.load_model(name)
        logits, labels = predict(model, eval_loader(model, ds, image_column, label_column, args.batch_size))
        s = spread(logits.softmax(dim=1), labels, args.resamples, args.seed)
        pct = lambda v: f'{100 * v:.2f}'  # noqa: E731
        print(f'| {name} | {pct(s["top1"])} | {pct(s["mean_confidence"])} | {pct(s["ece"])} | '
              f'{pct(s["calibrated_floor_mean"])} / {pct(s["calibrated_floor_95"])} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
