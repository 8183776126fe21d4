"""Helpers that build Hub folders and offline Hugging Face caches for tests."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Dict, Optional

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


def closed_port_endpoint() -> str:
    """An ``HF_ENDPOINT`` nothing listens on: a request there fails only after huggingface_hub's retries
    (about 20 s), so a load that ends in seconds sent none, and none leaves the machine."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return f'http://127.0.0.1:{port}'


def no_network_env(tmp_path: Path, offline: bool, pythonpath: Optional[str] = None, **extra: str) -> Dict[str, str]:
    """A subprocess environment with an empty Hugging Face cache, the Hub at a closed port, and
    ``HF_HUB_OFFLINE`` set or not; ``MISLAS_ZOO_DIR`` only if passed in ``extra``."""
    env = dict(os.environ, HF_ENDPOINT=closed_port_endpoint(), HF_HUB_CACHE=str(tmp_path / 'empty-hub-cache'),
               HF_HOME=str(tmp_path / 'hf_home'), OMP_NUM_THREADS='1')
    for key in ('MISLAS_ZOO_DIR', 'HF_HUB_OFFLINE', 'PYTHONPATH'):
        env.pop(key, None)
    if offline:
        env['HF_HUB_OFFLINE'] = '1'
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    env.update(extra)
    return env


# Run as `python -c LOAD_EVERY_TAG '{"tag": "reference folder", ...}'`: loads every tag with
# timm.create_model(tag, pretrained=True) and mislas_timm.load_model(tag), checks their logits equal
# those of the reference folder loaded through local-dir:, and prints one JSON line: the seconds the
# loads took, the connections attempted (a tripwire on socket.connect: there must be none), where the
# package and its zoo folders are.
LOAD_EVERY_TAG = '''
import json, socket, sys, time
attempts = []
_connect = socket.socket.connect
def _tripwire(sock, address):
    if sock.family != socket.AF_UNIX:
        attempts.append(repr(address))
    return _connect(sock, address)
socket.socket.connect = _tripwire
import torch, timm, mislas_timm
from mislas_timm.models.pretrained_tags import zoo_dirs
references = json.loads(sys.argv[1])
x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
files = {}
with torch.no_grad():
    for tag, folder in references.items():
        expected = timm.create_model("local-dir:" + folder, pretrained=True).eval()(x)
        tagged = timm.create_model(tag, pretrained=True).eval()
        assert torch.equal(tagged(x), expected), tag
        assert torch.equal(mislas_timm.load_model(tag)(x), expected), tag
        files[tag] = tagged.pretrained_cfg.get("file")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "attempts": attempts, "files": files, "package": mislas_timm.__file__,
                  "zoo_dirs": [str(d) for d in zoo_dirs()]}))
'''
