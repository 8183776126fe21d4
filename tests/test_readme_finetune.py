"""README's "Fine-tune on your own data" as a user types it: every command of its shell blocks runs, in order.

Offline stand-ins, nothing else changed: the Hub data set id the section names is swapped for a tiny local
copy with the same columns (``image`` in grey levels, ``label`` as ClassLabel), the ``my_images`` folder
it describes is made here (``train/<class>/*.png``, ``test/<class>/*.png``), the zoo tag loads from its
shipped folder with the Hub unreachable, and ``hub push`` runs without a token, so it must stop in one
line after checking the folder, before any upload.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .conftest import make_image_dataset
from .hub_fixtures import closed_port_endpoint

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()
HUB_DATASET = 'zalando-datasets/fashion_mnist'
CLASSES = ('boot', 'coat', 'dress', 'shirt')


def section_commands(readme: str = README):
    """The command lines of the shell blocks between the finetune markers, continuation lines joined."""
    section = readme.split('<!-- finetune -->', 1)[1].split('<!-- /finetune -->', 1)[0]
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', section, flags=re.S):
        for line in block.replace('\\\n', ' ').splitlines():
            line = line.split('  # ', 1)[0].strip()
            if line and not line.startswith('#'):
                commands.append(line)
    return commands


def test_the_section_exists_and_names_its_commands():
    commands = section_commands()
    assert any('--preset finetune' in c and HUB_DATASET in c for c in commands)
    assert any('--preset finetune' in c and 'my_images' in c for c in commands)
    assert any('mislas_timm.demo' in c for c in commands)
    assert any('mislas_timm.hub push' in c for c in commands)


def _write_image_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, per_class in (('train', 24), ('test', 6)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((32, 32, 3), 40, dtype=np.uint8)
                pixels[:, :, c % 3] = 200 if c < 3 else 120
                noisy = np.clip(pixels + rng.normal(0, 30, pixels.shape), 0, 255).astype(np.uint8)
                Image.fromarray(noisy).save(folder / f'{i:03d}.png')


def _hub_standin(root: Path) -> Path:
    import datasets

    folder = root / 'fashion-standin'
    splits = {'train': make_image_dataset([24] * 4, size=28, seed=0, class_names=CLASSES, mode='L'),
              'test': make_image_dataset([6] * 4, size=28, seed=1, class_names=CLASSES, mode='L')}
    datasets.DatasetDict({k: v.rename_column('img', 'image') for k, v in splits.items()}).save_to_disk(str(folder))
    return folder


def _wait_for_page(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f'the demo exited with {proc.returncode}: {proc.stderr.read()[-2000:]}')
        try:
            return urllib.request.urlopen(url, timeout=5).read()
        except OSError:
            time.sleep(1)
    raise AssertionError(f'the demo did not answer at {url} within {timeout:.0f} s')


@pytest.mark.slow
def test_readme_finetune_section_runs(tmp_path):
    _write_image_folder(tmp_path / 'my_images')
    standin = _hub_standin(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf_home'),
               HF_DATASETS_CACHE=str(tmp_path / 'datasets'), HF_ENDPOINT=closed_port_endpoint(),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    env.pop('HF_TOKEN', None)
    for command in section_commands():
        argv = [sys.executable if a == 'python' else a for a in shlex.split(command.replace(HUB_DATASET, str(standin)))]
        if 'mislas_timm.demo' in command:
            port = argv[argv.index('--port') + 1] if '--port' in argv else '7860'
            proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            try:
                page = _wait_for_page(f'http://127.0.0.1:{port}/config', proc)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            for name in CLASSES:  # the fine-tuned model's own classes, no CIFAR-10 ones
                assert name.encode() in page, name
            assert b'airplane' not in page
            continue
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        if 'mislas_timm.hub push' in command:
            # no token here: the folder is checked, then one line before any upload
            assert result.returncode == 2, result.stderr[-2000:]
            assert 'token' in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
            continue
        assert result.returncode == 0, f'{command}\n{result.stderr[-3000:]}'
    for run in ('runs/fashion', 'runs/mine'):
        for stage in ('stage1', 'stage2'):
            assert (tmp_path / run / stage / 'model.safetensors').is_file(), (run, stage)
