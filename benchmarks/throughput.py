"""Training throughput of train.py's default loop against a bare loop, in fp32 and bf16.

    python benchmarks/throughput.py --dataset ../shared/datasets/cifar10 [--steps 80] [--compile] [--per-image]

For each precision (fp32; bf16 autocast) and each stage, in one process, alternating blocks:
- stage 1: the default input path (decode once, crop / flip / normalise whole batches, channels-last)
  + mixup + SGD step, against a bare forward+backward+step on a fixed random batch of the same
  layout and precision;
- stage 2: the stage-2 loop (frozen backbone, MiSLAS head, LAS) against a bare no-grad backbone
  forward + head step.
The loop/bare ratio measures what the data path and the loop cost on top of the model. ``--compile``
adds the same rows with ``torch.compile`` (after its warm-up); ``--per-image`` adds the per-image
PIL path for comparison. Run it on an otherwise idle machine: it prints the CPU it ran on.
"""
import argparse
import contextlib
import platform
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import mislas_timm
from mislas_timm.config import apply_overrides, load_preset, parse_config
from mislas_timm.data.batch_augment import BatchCropFlip, DecodedImages
from mislas_timm.data.hf import ImageClassificationView, build_train_transform
from mislas_timm.data.sampler import ClassAwareSampler, InstanceSampler
from mislas_timm.losses import LabelAwareSmoothing, mixup_batch, mixup_cross_entropy
from mislas_timm.runtime import cpu_has_native_bf16, device_name
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


def forever(dataset, **kwargs):
    while True:
        yield from DataLoader(dataset, **kwargs)


def run_case(cfg, data, view, augment, precision: str, compiled: bool, steps: int):
    batch = cfg.stage1.batch_size
    torch.manual_seed(0)
    model = build_model(cfg, data.num_classes, data.label_names).train().to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    autocast = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if precision == 'bf16' else contextlib.nullcontext
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    rng = np.random.default_rng(0)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def bare_step():
        with autocast():
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    loader = forever(view, batch_size=batch, sampler=InstanceSampler(len(view), seed=0), drop_last=True)

    def loop_step():
        images, targets = next(loader)
        images = augment(images) if augment else images
        images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            mixed, ya, yb, lam = mixup_batch(images, targets, 1.0, rng)
            loss = mixup_cross_entropy(net(mixed).float(), ya, yb, lam)
        opt.zero_grad()
        loss.backward()
        opt.step()

    s1 = compare(bare_step, loop_step, steps, batch)

    stage2 = mislas_timm.to_stage2(model, head='mislas', shift_bn=False).train().to(memory_format=torch.channels_last)
    net2 = torch.compile(stage2) if compiled else stage2
    opt2 = torch.optim.SGD(head_parameter_groups(stage2, 0.1, 0.5), lr=0.1, momentum=0.9, weight_decay=2e-4)
    las = LabelAwareSmoothing(data.class_counts, 0.3, 0.0)

    def bare2():
        with autocast():
            with torch.no_grad():
                feats = stage2.forward_head(stage2.forward_features(x), pre_logits=True)
            loss = las(stage2.get_classifier()(feats).float(), y)
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    loader2 = forever(view, batch_size=batch, sampler=ClassAwareSampler(data.train_labels, seed=0))

    def loop2():
        images, targets = next(loader2)
        images = augment(images) if augment else images
        images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = las(net2(images).float(), targets)
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    s2 = compare(bare2, loop2, steps, batch)
    return s1, s2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', required=True)
    p.add_argument('--steps', type=int, default=80)
    p.add_argument('--compile', action='store_true', help='also measure torch.compile (after its warm-up)')
    p.add_argument('--per-image', action='store_true', help='also measure the per-image PIL input path (fp32)')
    p.add_argument('--precisions', default='fp32,bf16')
    args = p.parse_args()
    cfg = parse_config(apply_overrides(load_preset('cifar10-lt-if100-cpu'), [f'dataset.source={args.dataset}']))
    data = load_data(cfg)
    model_cfg = build_model(cfg, data.num_classes, data.label_names).pretrained_cfg
    decoded = DecodedImages(data.train, data.image_column, data.label_column, size=(32, 32))
    augment = BatchCropFlip(model_cfg['mean'], model_cfg['std'], padding=4)
    print(f'machine: {device_name()} ({platform.machine()}), native bf16 units: {cpu_has_native_bf16()}, '
          f'torch {torch.__version__}, threads {torch.get_num_threads()}, batch {cfg.stage1.batch_size}, '
          f'steps {args.steps} per measurement')
    cases = [(prec, False, 'decode-once + channels-last', decoded, augment) for prec in args.precisions.split(',')]
    if args.compile:
        cases += [(prec, True, 'decode-once + channels-last + compile', decoded, augment)
                  for prec in args.precisions.split(',')]
    if args.per_image:
        transform = build_train_transform('cifar', model_cfg, padding=4)
        per_image = ImageClassificationView(data.train, data.image_column, data.label_column, transform)
        cases.append(('fp32', False, 'per-image PIL + channels-last', per_image, None))
    print('| path | precision | stage | bare img/s | loop img/s | loop / bare |')
    print('|---|---|---|---|---|---|')
    for precision, compiled, name, view, aug in cases:
        (b1, l1), (b2, l2) = run_case(cfg, data, view, aug, precision, compiled, args.steps)
        for stage, bare, loop in (('1', b1, l1), ('2', b2, l2)):
            print(f'| {name} | {precision} | {stage} | {bare:.0f} | {loop:.0f} | {100 * loop / bare:.0f}% |', flush=True)
    print(f'peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB')


if __name__ == '__main__':
    main()
