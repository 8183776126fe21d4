"""README.md as a user pastes it: every Python block runs, the zoo table is current, the two commands exist.

Offline: the Hub ids the blocks name are served by a Hugging Face cache filled from model_cards/
(huggingface_hub's real code path, HF_HUB_OFFLINE=1), and the Hub data set id ``uoft-cs/cifar10``
is swapped for a tiny local copy; everything else runs exactly as written.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mislas_timm import zoo

from .hub_fixtures import build_offline_cache

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()
BLOCKS = re.findall(r'```python\n(.*?)```', README, flags=re.S)


def test_readme_has_python_blocks_and_both_commands():
    assert len(BLOCKS) >= 3
    for marker in ('demo-command', 'test-command'):
        assert f'<!-- {marker} -->' in README and f'<!-- /{marker} -->' in README


def test_readme_zoo_table_is_current():
    table = README.split('<!-- zoo-table -->\n', 1)[1].split('\n<!-- /zoo-table -->', 1)[0]
    assert table == zoo.markdown_table(), 'regenerate it with python -m mislas_timm.zoo'


@pytest.fixture(scope='module')
def offline_hub(tmp_path_factory):
    cache = tmp_path_factory.mktemp('hub') / 'cache'
    for entry in zoo.shipped():
        build_offline_cache(cache, entry.hub_id, entry.folder)
    return cache


@pytest.mark.slow
@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_python_block_runs(index, offline_hub, tiny_dataset_dir, tmp_path):
    code = BLOCKS[index].replace('"uoft-cs/cifar10"', repr(str(tiny_dataset_dir)))
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(offline_hub), HF_HOME=str(tmp_path / 'hf_home'),
               HF_DATASETS_CACHE=str(tmp_path / 'datasets'), PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=600)
    assert result.returncode == 0, f'README block {index} failed:\n{code}\n{result.stderr[-3000:]}'
