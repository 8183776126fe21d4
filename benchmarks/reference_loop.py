"""A control for the full-recipe accuracy gap: the MiSLAS reference's stage-1 loop, rewritten plainly.

Why: our full-recipe IF100 stage 1 (train.py, bf16, decode-once) lands ~8 points below the
paper. This script trains the same recipe the way the reference code does, with none of our
machinery: torchvision's per-image PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor, Normalize with the reference constants), a shuffled DataLoader, fp32, contiguous
tensors, SGD with momentum 0.9 and weight decay on every parameter, mixup with one
lambda ~ Beta(alpha, alpha) per batch, the reference's epoch-wise lr rule (linear warm-up over
``--warmup`` epochs, x0.1 after the first milestone, x0.01 after the second) and the reference's
long-tail draw (numpy seed 0, per class shuffle the class's indices and keep the first n_k). It
shares only the CIFAR ResNet-32 definition with the package (the same layers as the reference's
``resnet32_fe`` + linear classifier; ``mislas_timm.convert`` maps the reference's checkpoints onto it
one to one). Run with a shortened schedule next to ``train.py`` with the same schedule: equal
top-1 means our loop is the reference's on this data; a clear difference points at our loop.

    OMP_NUM_THREADS=1 python benchmarks/reference_loop.py ../shared/datasets/cifar10 \
        --epochs 50 --warmup 5 --milestones 40 45 --out ../runs/ref-loop-50.json

It reports the last epoch (like everything in BENCHMARKS.md), never a best epoch on the test split.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import mislas_timm  # noqa: F401  (registers resnet32_cifar with timm)
import timm
from mislas_timm.metrics import ece

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


class Images(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def reference_longtail(labels: np.ndarray, num_classes: int, imb_factor: float, seed: int = 0) -> np.ndarray:
    """The reference's IMBALANCECIFAR draw: n_k = int(n_max * (1/IF) ** (k / (K - 1)))."""
    np.random.seed(seed)
    n_max = len(labels) / num_classes
    kept = []
    for k in range(num_classes):
        n_k = int(n_max * (1.0 / imb_factor) ** (k / (num_classes - 1.0)))
        idx = np.where(labels == k)[0]
        np.random.shuffle(idx)
        kept.append(idx[:n_k])
    return np.concatenate(kept)


def reference_lr(epoch: int, base: float, warmup: int, milestones) -> float:
    """The reference's adjust_learning_rate (epoch counted from 0, rule applied to epoch + 1)."""
    e = epoch + 1
    if e <= warmup:
        return base * e / warmup
    if e > milestones[1]:
        return base * 0.01
    if e > milestones[0]:
        return base * 0.1
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('data')
    ap.add_argument('--epochs', type=int, default=200)
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--milestones', type=int, nargs=2, default=[160, 180])
    ap.add_argument('--imb-factor', type=float, default=100)
    ap.add_argument('--mixup-alpha', type=float, default=1.0)
    ap.add_argument('--weight-decay', type=float, default=2e-4)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', required=True, help='JSON file for the result')
    args = ap.parse_args()

    import datasets
    ds = datasets.load_dataset(args.data)
    train_labels = np.asarray(ds['train']['label'])
    kept = reference_longtail(train_labels, 10, args.imb_factor)
    train_images = [ds['train'][int(i)]['img'].convert('RGB') for i in kept]
    test_images = [im.convert('RGB') for im in ds['test']['img']]
    test_labels = list(ds['test']['label'])
    counts = np.bincount(train_labels[kept], minlength=10).tolist()
    print(f'{len(kept)} training images, counts {counts}', flush=True)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    eval_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = DataLoader(Images(train_images, train_labels[kept].tolist(), train_tf), batch_size=128, shuffle=True)
    model = timm.create_model('resnet32_cifar', num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=args.weight_decay)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        lr = reference_lr(epoch, 0.1, args.warmup, args.milestones)
        for group in opt.param_groups:
            group['lr'] = lr
        model.train()
        total, seen = 0.0, 0
        for images, targets in loader:
            if args.mixup_alpha > 0:
                lam = float(np.random.beta(args.mixup_alpha, args.mixup_alpha))
                perm = torch.randperm(images.shape[0])
                logits = model(lam * images + (1 - lam) * images[perm])
                loss = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, targets[perm])
            else:
                loss = F.cross_entropy(model(images), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * images.shape[0]
            seen += images.shape[0]
        print(f'epoch {epoch + 1}/{args.epochs}: loss {total / seen:.4f}, lr {lr:.5f}, '
              f'{time.perf_counter() - start:.0f} s', flush=True)
    model.eval()
    test = Images(test_images, test_labels, eval_tf)
    logits = []
    with torch.no_grad():
        for images, _ in DataLoader(test, batch_size=500):
            logits.append(model(images))
    logits = torch.cat(logits)
    labels = torch.as_tensor(test_labels)
    probs = logits.softmax(1)
    top1 = float((logits.argmax(1) == labels).float().mean()) * 100
    result = dict(top1=round(top1, 2), ece=round(ece(probs, labels) * 100, 2), epochs=args.epochs,
                  warmup=args.warmup, milestones=args.milestones, mixup_alpha=args.mixup_alpha,
                  weight_decay=args.weight_decay, train_time_s=round(time.perf_counter() - start),
                  per_class_top1=[round(100 * float((logits.argmax(1)[labels == k] == k).float().mean()), 1)
                                  for k in range(10)],
                  torch=torch.__version__, counts=counts)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result), flush=True)
    assert math.isfinite(top1)


if __name__ == '__main__':
    main()
