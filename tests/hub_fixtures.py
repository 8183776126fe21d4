"""Helpers that build Hub folders and offline Hugging Face caches for tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import timm
import torch

import mislas_timm  # noqa: F401
from mislas_timm.hub import save_hub_folder
from mislas_timm.metrics import calibration_report

CIFAR10_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
CIFAR10_LT_COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def make_hub_folder(folder: Path, arch: str = 'resnet20_cifar', seed: int = 0, stage: int = 2) -> Path:
    """A complete Hub folder of a random CIFAR-10 model with a report computed on random data."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=10).eval()
    probs = torch.randn(200, 10).mul(2).softmax(1)
    report = calibration_report(probs, torch.randint(0, 10, (200,)), CIFAR10_LT_COUNTS, [3, 7])
    report.update(split='test', dataset='cifar10', wall_time_s=1.0, images_per_s=200.0)
    mislas = {'class_counts': CIFAR10_LT_COUNTS, 'rank_split': [3, 7], 'data_seed': 0, 'imb_factor': 100,
              'split_sha256': '0' * 64, 'preset': 'cifar10-lt-if100-cpu', 'stage': stage}
    model.pretrained_cfg = dict(model.pretrained_cfg, label_names=CIFAR10_NAMES)
    return save_hub_folder(model, folder, label_names=CIFAR10_NAMES, mislas=mislas, metrics=report,
                           card_context={'hub_id': 'mislas-timm/test-model'})


def build_offline_cache(cache: Path, repo_id: str, folder: Path, revision: str = 'a' * 40) -> Path:
    """The layout huggingface_hub reads: models--ORG--NAME/refs/main + snapshots/<rev>/<files>."""
    repo_dir = cache / ('models--' + repo_id.replace('/', '--'))
    snapshot = repo_dir / 'snapshots' / revision
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text(revision)
    return snapshot
