"""Demo fixtures: two small CIFAR-10 Hub folders and a running app; a fine-tuned-style 5-class pair with its
own class names (and a folder of example images) and a running app of it."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .hub_fixtures import make_hub_folder

# A user's own data: 5 classes, none of them CIFAR-10's.
CUSTOM_NAMES = ['bicycle', 'cactus', 'lantern', 'otter', 'violin']
CUSTOM_COUNTS = [300, 120, 50, 20, 8]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def demo_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo-models')
    return make_hub_folder(root / 'mislas', seed=0, stage=2), make_hub_folder(root / 'baseline', seed=1, stage=1)


@pytest.fixture(scope='session')
def demo_models(demo_folders):
    from mislas_timm.demo import load_models
    mislas, baselines = load_models(str(demo_folders[0]), [('CE baseline', str(demo_folders[1]))])
    return mislas, baselines


@pytest.fixture(scope='session')
def running_app(demo_models):
    from mislas_timm.demo import build_app, launch_app
    mislas, baselines = demo_models
    app = build_app(mislas, baselines)
    port = free_port()
    launch_app(app, server_name='127.0.0.1', server_port=port, prevent_thread_lock=True, quiet=True)
    yield f'http://127.0.0.1:{port}/'
    app.close()


def write_png(path: Path, mode: str = 'RGB', size=(32, 32)) -> Path:
    from PIL import Image
    Image.new('RGB', size, (180, 40, 40)).convert(mode).save(path)
    return path


def make_custom_folder(folder: Path, names=CUSTOM_NAMES, seed: int = 0, stage: int = 2) -> Path:
    """A Hub folder as a ``finetune`` run writes it (stage 1 or 2): a tiny resnet20_cifar with ``names``."""
    import timm
    import torch

    from mislas_timm.hub import save_hub_folder
    from mislas_timm.metrics import calibration_report

    k = len(names)
    counts = CUSTOM_COUNTS[:k] + [8] * max(0, k - len(CUSTOM_COUNTS))
    torch.manual_seed(seed)
    model = timm.create_model('resnet20_cifar', num_classes=k).eval()
    report = calibration_report(torch.randn(60, k).mul(2).softmax(1), torch.randint(0, k, (60,)), counts, [2, 4])
    report.update(split='test', dataset='my-images', wall_time_s=1.0, images_per_s=60.0)
    mislas = {'class_counts': counts, 'rank_split': [2, 4], 'data_seed': 0, 'split_sha256': '0' * 64,
              'preset': 'finetune', 'stage': stage}
    return save_hub_folder(model, folder, label_names=list(names), mislas=mislas, metrics=report,
                           card_context={'hub_id': 'someone/my-model'})


@pytest.fixture(scope='session')
def custom_folders(tmp_path_factory):
    """(stage2, stage1) of a fine-tuned-style run with CUSTOM_NAMES."""
    root = tmp_path_factory.mktemp('my-run')
    return make_custom_folder(root / 'stage2', seed=0, stage=2), make_custom_folder(root / 'stage1', seed=1, stage=1)


@pytest.fixture(scope='session')
def custom_examples(tmp_path_factory) -> Path:
    """A folder of example images as a user has them: test/<class>/*.png, plus one loose file."""
    from PIL import Image

    root = tmp_path_factory.mktemp('my-examples')
    for i, name in enumerate(CUSTOM_NAMES[:3]):
        (root / name).mkdir()
        for j in range(2):
            Image.new('RGB', (32, 32), (40 * i, 60 * j, 200 - 40 * i)).save(root / name / f'{j:04d}.png')
    Image.new('RGB', (48, 40), (10, 200, 90)).save(root / 'violin_0007.jpg')
    (root / 'notes.txt').write_text('not an image')
    return root


@pytest.fixture(scope='session')
def custom_models(custom_folders):
    from mislas_timm.demo import load_models
    return load_models(str(custom_folders[0]), [('baseline: stage1', str(custom_folders[1]))])


@pytest.fixture(scope='session')
def running_custom_app(custom_models, custom_examples):
    from mislas_timm.demo import build_app, example_images, launch_app
    mislas, baselines = custom_models
    app = build_app(mislas, baselines, examples=example_images(str(custom_examples)))
    port = free_port()
    launch_app(app, server_name='127.0.0.1', server_port=port, prevent_thread_lock=True, quiet=True)
    yield f'http://127.0.0.1:{port}/'
    app.close()
