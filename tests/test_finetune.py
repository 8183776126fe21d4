"""The finetune preset end to end: a 5-class image folder fine-tuned from a zoo tag for 2 + 1 epochs
beats the same recipe from scratch, under one process and under ``accelerate launch`` with two."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mislas_timm.sources import shipped_folder

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
TAG = 'resnet32_cifar.cifar10_lt_if100_mislas'
SHAPES = ('disc', 'square', 'triangle', 'cross', 'ring')
TRAIN_PER_CLASS, VAL_PER_CLASS, TEST_PER_CLASS = 40, 8, 12
NUM_TEST = TEST_PER_CLASS * len(SHAPES) + 1  # odd: two processes must not count a padded duplicate
# The same recipe for every run: the preset with batches small enough for ~150 training images.
RECIPE = ['--preset', 'finetune', '--epochs', '2', '--stage2-epochs', '1', '--mixed-precision', 'no',
          '--set', 'stage1.batch_size=16', '--set', 'stage2.batch_size=16',
          '--set', f'dataset.val_per_class={VAL_PER_CLASS}']


def draw_shape(c: int, rng: np.random.RandomState, size: int = 32):
    """Class c is a shape (random place, size and colours, noisy): CIFAR features see it at once, a
    network trained from scratch for two epochs does not."""
    from PIL import Image, ImageDraw

    bg = rng.uniform(0, 255, 3)
    fg = rng.uniform(0, 255, 3)
    while np.abs(fg - bg).sum() < 150:
        fg = rng.uniform(0, 255, 3)
    image = Image.new('RGB', (size, size), tuple(int(v) for v in bg))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(7, 11)
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    colour = tuple(int(v) for v in fg)
    if c == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif c == 1:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif c == 2:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif c == 3:
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    else:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=3)
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope='module')
def shapes_folder(tmp_path_factory) -> Path:
    """An image folder train/<class>/*.png + test/<class>/*.png of 32x32 shapes."""
    root = tmp_path_factory.mktemp('shapes') / 'shapes'
    rng = np.random.RandomState(0)
    for split, n in (('train', TRAIN_PER_CLASS), ('test', TEST_PER_CLASS)):
        for c, name in enumerate(SHAPES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n + (split == 'test' and c == 0)):
                draw_shape(c, rng).save(folder / f'{i}.png')
    return root


def run(out: Path, *args, launcher=(sys.executable, str(ROOT / 'train.py'))):
    result = subprocess.run([*launcher, *RECIPE, '--output-dir', str(out), *map(str, args)], capture_output=True,
                            text=True, env=ENV, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return {stage: json.loads((out / stage / 'metrics.json').read_text()) for stage in ('stage1', 'stage2')}


@pytest.fixture(scope='module')
def runs(shapes_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp('finetune')
    finetuned = run(root / 'finetuned', '--init', TAG, '--dataset', shapes_folder)
    # From scratch through the package's own entry point (what a wheel install has).
    scratch = run(root / 'scratch', '--model', 'resnet32_cifar', '--dataset', shapes_folder,
                  launcher=(sys.executable, '-m', 'mislas_timm.train'))
    return root, finetuned, scratch


def test_finetune_preset_is_the_data_as_given_with_a_pretrained_friendly_stage1():
    from mislas_timm.config import list_presets, load_preset, parse_config
    assert 'finetune' in list_presets()
    cfg = parse_config(load_preset('finetune'))
    assert cfg.model.arch is None and cfg.model.init is None  # from --init, or --model ARCH from scratch
    assert cfg.longtail is None and cfg.dataset.num_classes is None and cfg.dataset.val_per_class == 20
    assert cfg.data.input_size is None and cfg.data.mean is None and cfg.data.train_transform == 'auto'
    paper = parse_config(load_preset('cifar10-lt-if100'))
    s1 = cfg.stage1
    assert 0.01 <= s1.lr <= 0.05 and s1.warmup_epochs > 0 and s1.schedule == 'cosine'
    assert s1.epochs < paper.stage1.epochs
    assert (cfg.stage2.head, cfg.stage2.loss) == ('mislas', 'las')  # then the usual MiSLAS stage 2


@pytest.mark.slow
def test_finetuned_beats_scratch(runs):
    _, finetuned, scratch = runs
    for stage in ('stage1', 'stage2'):
        assert finetuned[stage]['num_samples'] == scratch[stage]['num_samples'] == NUM_TEST
        assert finetuned[stage]['top1'] >= scratch[stage]['top1'] + 0.3, (stage, finetuned[stage]['top1'],
                                                                           scratch[stage]['top1'])
    assert finetuned['stage2']['top1'] >= 0.8


@pytest.mark.slow
def test_run_records_its_source_and_stage2_starts_from_stage1(runs):
    root, _, _ = runs
    out = root / 'finetuned'
    zoo_file = shipped_folder(TAG) / 'model.safetensors'
    for stage in ('stage1', 'stage2'):
        config = json.loads((out / stage / 'config.json').read_text())
        assert config['label_names'] == sorted(SHAPES) and config['architecture'] == 'resnet32_cifar'
        assert config['mislas']['init'] == TAG
        assert config['mislas']['init_sha256'] == hashlib.sha256(zoo_file.read_bytes()).hexdigest()
    stage2 = json.loads((out / 'stage2' / 'config.json').read_text())['mislas']
    assert stage2['stage1']['source'] == str(out / 'stage1')
    # Stage 2 froze the backbone of OUT/stage1 (not the zoo's): its convolutions are stage 1's.
    zoo, s1, s2 = load_file(zoo_file), load_file(out / 'stage1' / 'model.safetensors'), \
        load_file(out / 'stage2' / 'model.safetensors')
    convs = [k for k in s1 if k.endswith('conv1.weight')]
    assert convs and all(torch.equal(s1[k], s2[k]) for k in convs)
    assert not all(torch.equal(s1[k], zoo[k]) for k in convs)  # stage 1 trained them
    assert 'classifier fc re-initialised (the source has 10 classes, the data 5)' in (out / 'train.log').read_text()


@pytest.mark.slow
def test_finetune_under_accelerate_launch_with_two_processes(runs, shapes_folder):
    """The DESIGN.md recipe on a CPU machine: 2 gloo processes, every test image counted once, the
    quality of one process (not bit-identical: the batches are sharded)."""
    root, finetuned, scratch = runs
    launcher = (sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
                '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', str(ROOT / 'train.py'))
    out = root / 'two'
    two = run(out, '--init', TAG, '--dataset', shapes_folder, launcher=launcher)
    assert '2 process(es)' in (out / 'train.log').read_text()
    for stage in ('stage1', 'stage2'):
        assert two[stage]['num_samples'] == NUM_TEST
        assert two[stage]['top1'] >= scratch[stage]['top1'] + 0.3
        assert abs(two[stage]['top1'] - finetuned[stage]['top1']) <= 0.15, (stage, two[stage]['top1'],
                                                                             finetuned[stage]['top1'])
