"""Training throughput of train.py's loop against a bare loop of the same model and batch size.

    python benchmarks/throughput.py --dataset ../shared/datasets/cifar10 [--steps 40]

Stage 1: train.py's stage-1 loop (data loading + augmentation + mixup + SGD step) vs a bare
forward+backward+step loop on a fixed random batch. Stage 2: the stage-2 loop (frozen backbone,
MiSLAS head, LAS) vs a bare no-grad forward of the backbone + head step. Same process, same model,
same batch size (128). Also reports the peak resident memory of the process.
"""
import argparse
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import mislas_timm
from mislas_timm.config import load_preset
from mislas_timm.data.batch_augment import BatchCropFlip, DecodedImages
from mislas_timm.data.hf import ImageClassificationView, build_train_transform
from mislas_timm.data.sampler import ClassAwareSampler, InstanceSampler
from mislas_timm.losses import LabelAwareSmoothing, mixup_batch, mixup_cross_entropy
from mislas_timm.stage2 import head_parameter_groups
from mislas_timm.training import build_model, load_data


def compare(bare, loop, steps, batch, rounds=4, warmup=5):
    """Median images/s of ``bare`` and ``loop``, measured in alternating blocks so that warm-up and
    drift of the machine hit both alike."""
    for _ in range(warmup):
        bare()
        loop()
    rates = {'bare': [], 'loop': []}
    for _ in range(rounds):
        for name, fn in (('bare', bare), ('loop', loop)):
            start = time.perf_counter()
            for _ in range(steps // rounds):
                fn()
            rates[name].append((steps // rounds) * batch / (time.perf_counter() - start))
    return float(np.median(rates['bare'])), float(np.median(rates['loop']))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--dataset', required=True)
    p.add_argument('--steps', type=int, default=80)
    p.add_argument('--num-workers', type=int, help="data loader workers (default: the preset's)")
    p.add_argument('--decode-once', action='store_true', help='the data.decode_once path: decode once, '
                                                               'augment whole batches in torch')
    args = p.parse_args()
    cfg = load_preset('cifar10-lt-if100-cpu')
    cfg['dataset']['source'] = args.dataset
    data = load_data(cfg)
    workers = cfg['data']['num_workers'] if args.num_workers is None else args.num_workers
    print(f'data loader workers: {workers}, torch threads: {torch.get_num_threads()}, '
          f'decode once: {args.decode_once}')
    batch = cfg['stage1']['batch_size']
    torch.manual_seed(0)
    model = build_model(cfg, data.num_classes, data.label_names).train()
    if args.decode_once:
        view = DecodedImages(data.train, data.image_column, data.label_column)
        augment = BatchCropFlip(model.pretrained_cfg['mean'], model.pretrained_cfg['std'], padding=4)
    else:
        transform = build_train_transform('cifar', model.pretrained_cfg, padding=4)
        view = ImageClassificationView(data.train, data.image_column, data.label_column, transform)
        augment = None
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    rng = np.random.default_rng(0)

    x = torch.randn(batch, 3, 32, 32)
    if args.decode_once:
        # The batch augmentation returns channels-last tensors (a permuted gather), which oneDNN runs
        # faster; the bare loop gets the same layout so that the ratio measures the data path only.
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def bare_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    loader = iter(DataLoader(view, batch_size=batch, sampler=InstanceSampler(len(view), seed=0), drop_last=True,
                             num_workers=workers))

    def loop_step():
        images, targets = next(loader)
        images = augment(images) if augment else images
        mixed, ya, yb, lam = mixup_batch(images, targets, 1.0, rng)
        loss = mixup_cross_entropy(model(mixed), ya, yb, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()

    bare1, loop1 = compare(bare_step, loop_step, args.steps, batch)
    print(f'stage 1: bare forward+backward {bare1:.1f} img/s, train loop {loop1:.1f} img/s '
          f'({100 * loop1 / bare1:.0f}% of bare)')

    stage2 = mislas_timm.to_stage2(model, head='mislas', shift_bn=False).train()
    opt2 = torch.optim.SGD(head_parameter_groups(stage2, 0.1, 0.5), lr=0.1, momentum=0.9, weight_decay=2e-4)
    las = LabelAwareSmoothing(data.class_counts, 0.3, 0.0)

    def bare2():
        with torch.no_grad():
            feats = stage2.forward_head(stage2.forward_features(x), pre_logits=True)
        loss = las(stage2.get_classifier()(feats), y)
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    loader2 = iter(DataLoader(view, batch_size=batch, sampler=ClassAwareSampler(data.train_labels, seed=0),
                              num_workers=workers))

    def loop2():
        images, targets = next(loader2)
        images = augment(images) if augment else images
        loss = las(stage2(images), targets)
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    b2, l2 = compare(bare2, loop2, args.steps, batch)
    print(f'stage 2: bare no-grad forward + head step {b2:.1f} img/s, train loop {l2:.1f} img/s '
          f'({100 * l2 / b2:.0f}% of bare)')
    print(f'peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB')


if __name__ == '__main__':
    main()
