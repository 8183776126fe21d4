"""How far a model's test ECE is from noise: its calibrated floor and its spread over test sets.

    python benchmarks/ece_spread.py MODEL [MODEL ...] --dataset ../runs/datasets/cifar10-png

For each model (zoo name, folder, ``local-dir:`` or ``hf-hub:``), one fp32 pass over the test split,
then ``--resamples`` draws (``--seed``) of which predictions are correct, the confidences kept:

- **calibrated floor**: each prediction correct with probability equal to its confidence
  (consistency resampling, Vaicenavicius et al. 2019), i.e. the ECE that a perfectly calibrated
  model with these confidences would still get on this many images; mean and 95th percentile. An
  ECE near the floor is noise; one above its 95th percentile is miscalibration.
- **test-set SD**: each prediction correct with probability equal to the accuracy of its
  confidence bin (15 equal-width (lo, hi] bins, as the ECE), i.e. a model whose true reliability is
  the one measured; the standard deviation of its ECE over test sets of this size, the yardstick
  for comparing two single-test-set ECEs (ours against a paper's).

Also accuracy against mean confidence (over- or under-confident overall).

No bootstrap over the test images: resampling with replacement adds binning noise, so the ECE of a
resampled test set is biased upwards and its percentile interval can miss the ECE itself.
"""
import argparse
import sys

import numpy as np
import torch

import mislas_timm
from mislas_timm.data.hf import load_split, resolve_columns
from mislas_timm.evaluation import eval_loader, predict
from mislas_timm.metrics import confidence_bin_index, ece, reliability_bins


def spread(probs: torch.Tensor, labels: torch.Tensor, resamples: int, seed: int, n_bins: int = 15) -> dict:
    """The ECE of ``probs``, its calibrated floor and its test-set SD (fractions); see the module docstring."""
    conf, pred = probs.max(dim=1)
    n, k = probs.shape
    correct = (pred == labels).double()
    bin_accuracy = torch.tensor([a or 0.0 for a in reliability_bins(probs, labels, n_bins)['accuracies']],
                                dtype=torch.float64)  # an empty bin holds no sample, so its 0 is never drawn
    bin_of = confidence_bin_index(conf, n_bins)
    rng = np.random.default_rng(seed)

    def ece_if_correct_with(p_correct: torch.Tensor) -> float:
        hit = torch.from_numpy(rng.random(n) < p_correct.numpy())
        return ece(probs, torch.where(hit, pred, (pred + 1) % k))  # any wrong label will do

    floor = [ece_if_correct_with(conf.double()) for _ in range(resamples)]
    measured = [ece_if_correct_with(bin_accuracy[bin_of]) for _ in range(resamples)]
    return {'top1': float(correct.mean()), 'mean_confidence': float(conf.double().mean()), 'ece': ece(probs, labels),
            'calibrated_floor_mean': float(np.mean(floor)), 'calibrated_floor_95': float(np.percentile(floor, 95)),
            'test_set_sd': float(np.std(measured, ddof=1))}


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
    print('| model | top-1 | mean confidence | ECE | test-set SD of the ECE | calibrated floor: mean / 95th percentile |')
    print('|---|---|---|---|---|---|')
    for name in args.models:
        model = mislas_timm.load_model(name)
        logits, labels = predict(model, eval_loader(model, ds, image_column, label_column, args.batch_size))
        s = spread(logits.softmax(dim=1), labels, args.resamples, args.seed)
        pct = lambda v: f'{100 * v:.2f}'  # noqa: E731
        print(f'| {name} | {pct(s["top1"])} | {pct(s["mean_confidence"])} | {pct(s["ece"])} | {pct(s["test_set_sd"])} | '
              f'{pct(s["calibrated_floor_mean"])} / {pct(s["calibrated_floor_95"])} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
