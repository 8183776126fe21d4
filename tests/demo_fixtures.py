"""Demo fixtures: two small Hub folders and a running app."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from .hub_fixtures import make_hub_folder


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
