"""Shared fixtures: tiny synthetic data sets in the Hub schema (no ../shared needed)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_CLASSES = ['red', 'green', 'blue', 'gray']


def make_image_dataset(num_per_class, size=16, seed=0, class_names=TINY_CLASSES, mode='RGB'):
    """A ``datasets.Dataset`` with columns img (Image) and label (ClassLabel): class c is a noisy colour."""
    import datasets
    from PIL import Image

    rng = np.random.RandomState(seed)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (128, 128, 128)]
    images, labels = [], []
    for c, n in enumerate(num_per_class):
        for _ in range(n):
            base = np.array(colours[c % len(colours)], dtype=np.float32)
            pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, 'RGB')
            images.append(image.convert(mode) if mode != 'RGB' else image)
            labels.append(c)
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=list(class_names))})
    return datasets.Dataset.from_dict({'img': images, 'label': labels}, features=features)


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) as a module, so tests can call its functions."""
    spec = importlib.util.spec_from_file_location(name, ROOT / 'benchmarks' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encode_image(image, fmt: str, **save_kwargs) -> bytes:
    """The file bytes of a PIL image or an H x W x 3 uint8 array saved as ``fmt`` (PNG, JPEG, ...)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


@pytest.fixture(scope='session')
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """save_to_disk folder with a balanced train split (60 per class) and a test split (10 per class)."""
    import datasets

    folder = tmp_path_factory.mktemp('tiny') / 'tiny-colours'
    train = make_image_dataset([60] * 4, seed=0)
    test = make_image_dataset([10] * 4, seed=1)
    datasets.DatasetDict({'train': train, 'test': test}).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope='session')
def tiny_config_file(tmp_path_factory, tiny_dataset_dir) -> Path:
    """A train.py config for the tiny data: the CIFAR-LT recipe scaled down to seconds."""
    path = tmp_path_factory.mktemp('cfg') / 'tiny.yaml'
    path.write_text(f"""
base: _cifar_lt
dataset: {{source: {tiny_dataset_dir}, num_classes: 4}}
longtail: {{imb_factor: 10}}
model: {{arch: resnet20_cifar}}
data: {{input_size: [3, 16, 16], eval_batch_size: 64}}
groups: {{rank_split: [1, 3]}}
runtime: {{mixed_precision: 'no'}}   # fp32 for speed and repeatability; `auto` has its own tests
stage1: {{epochs: 2, batch_size: 16, warmup_epochs: 1, schedule: cosine, milestones: []}}
stage2: {{epochs: 2, batch_size: 16, shift_bn: true}}
""")
    return path


def pytest_sessionfinish(session, exitstatus):
    """Under CI (MISLAS_FAIL_ON_SKIP=1) a skipped test fails the run; "no tests ran" fails too."""
    import os

    reporter = session.config.pluginmanager.get_plugin('terminalreporter')
    if not os.environ.get('MISLAS_FAIL_ON_SKIP') or reporter is None:
        return
    skipped = len(reporter.stats.get('skipped', []))
    passed = len(reporter.stats.get('passed', []))
    if skipped or passed == 0:
        session.exitstatus = 1
        reporter.write_line(f'MISLAS_FAIL_ON_SKIP: {skipped} skipped, {passed} passed: failing the run', red=True)
