"""The wheel: built from the tree, installed into another folder, used from another cwd with no network.

It carries every shipped zoo folder inside the package (setup.py copies model_cards/ at build time)
and nothing outside mislas_timm/; from it every shipped tag loads with timm.create_model(TAG,
pretrained=True) with the logits of the repository's folder, and `python -m mislas_timm.zoo` runs.
"""
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mislas_timm import zoo
from mislas_timm.hub import HUB_FILES

from .hub_fixtures import LOAD_EVERY_TAG, no_network_env

ROOT = Path(__file__).resolve().parents[1]
# What the build reads (pyproject.toml names README.md as the long description).
BUILD_INPUTS = ('pyproject.toml', 'setup.py', 'MANIFEST.in', 'README.md', 'mislas_timm', 'model_cards')

pytestmark = pytest.mark.slow


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    """A wheel built from a copy of the tree (the build leaves build/ and *.egg-info behind: not in the checkout)."""
    src = tmp_path_factory.mktemp('src')
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns('__pycache__', '*.pyc', 'model_cards')
                            if name == 'mislas_timm' else shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp('wheel')
    result = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', '--no-build-isolation', '-q',
                             '-w', str(out)], cwd=src, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [built] = out.glob('mislas_timm-*.whl')
    return built


@pytest.fixture(scope='module')
def installed(wheel, tmp_path_factory):
    target = tmp_path_factory.mktemp('site')
    result = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target),
                             str(wheel)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return target


def test_wheel_holds_the_package_with_its_zoo_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tops = {n.split('/', 1)[0] for n in names}
        assert tops - {'mislas_timm'} and all(t.endswith('.dist-info') for t in tops - {'mislas_timm'}), tops
        assert not [n for n in names if '/' not in n], 'a top-level file outside mislas_timm/'
        # every module, preset and example image of the source package (the command lines included)
        package = ROOT / 'mislas_timm'
        wanted = {f'mislas_timm/{p.relative_to(package).as_posix()}' for p in package.rglob('*')
                  if p.is_file() and p.suffix in ('.py', '.yaml', '.png') and '__pycache__' not in p.parts}
        assert wanted <= set(names), sorted(wanted - set(names))
        # the command lines as console scripts too
        [entry_points] = [n for n in names if n.endswith('.dist-info/entry_points.txt')]
        scripts = z.read(entry_points).decode()
        assert 'mislas-train = mislas_timm.train:main' in scripts and 'mislas-demo = mislas_timm.demo:main' in scripts
        # every shipped folder, byte for byte, and no folder that is not shipped
        shipped = zoo.shipped()
        assert shipped
        cards = {n.split('/')[2] for n in names if n.startswith('mislas_timm/model_cards/')}
        assert cards == {e.name for e in shipped}
        for entry in shipped:
            for name in HUB_FILES:
                data = z.read(f'mislas_timm/model_cards/{entry.name}/{name}')
                assert _sha256(data) == _sha256((entry.folder / name).read_bytes()), (entry.name, name)


def test_installed_wheel_loads_every_shipped_tag_offline_from_another_cwd(installed, tmp_path):
    references = {e.name: str(e.folder) for e in zoo.shipped()}  # the repository's folders
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    for offline in (False, True):
        env = no_network_env(tmp_path, offline, pythonpath=str(installed))
        result = subprocess.run([sys.executable, '-c', LOAD_EVERY_TAG, json.dumps(references)], capture_output=True,
                                text=True, env=env, cwd=elsewhere, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        copy = installed / 'mislas_timm' / 'model_cards'
        assert report['package'] == str(installed / 'mislas_timm' / '__init__.py')  # the wheel, not the checkout
        assert report['zoo_dirs'] == [str(copy)]
        assert report['files'] == {name: str(copy / name / 'model.safetensors') for name in references}
        assert report['attempts'] == [] and report['seconds'] < 20, report
    result = subprocess.run([sys.executable, '-m', 'mislas_timm.zoo'], capture_output=True, text=True,
                            env=no_network_env(tmp_path, False, pythonpath=str(installed)), cwd=elsewhere, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == zoo.markdown_table()
