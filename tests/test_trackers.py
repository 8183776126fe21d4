"""--report-to: TensorBoard logs a real run; a tracker that cannot start is refused before any work."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mislas_timm.config import ConfigError
from mislas_timm.trackers import check_report_to

ROOT = Path(__file__).resolve().parents[1]

# Makes the named packages unimportable in a fresh interpreter, as on a machine without them: an import
# blocker on sys.meta_path (nothing of accelerate or the trackers is mocked). It answers find_spec with a spec
# whose loader fails, so Accelerate's own start-up probe (importlib.util.find_spec) still runs unharmed.
HIDE = '''
import importlib.abc, importlib.machinery, sys

class _Hidden(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name.split('.')[0] in HIDDEN else None

    def create_module(self, spec):
        raise ModuleNotFoundError(f'No module named {spec.name!r}', name=spec.name)

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, _Hidden())
'''


def _python(code: str, hidden=('tensorboard', 'tensorboardX', 'wandb')):
    """Run ``code`` in a fresh interpreter (in the repository root) with ``hidden`` packages unimportable."""
    prelude = f'HIDDEN = {set(hidden)!r}\n{HIDE}\n'
    return subprocess.run([sys.executable, '-c', prelude + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})


def test_installed_tensorboard_passes_and_unknown_trackers_are_refused():
    check_report_to(None)
    check_report_to('tensorboard')  # the dev extra installs it
    with pytest.raises(ConfigError, match="--report-to 'comet' is not supported; use one of tensorboard, wandb, all"):
        check_report_to('comet')


@pytest.mark.slow  # seconds of interpreter start-up (torch, timm, datasets), no training
def test_missing_tracker_is_refused_in_one_line_before_any_work(tmp_path, tiny_config_file):
    out = tmp_path / 'run'
    argv = ['train.py', '--config', str(tiny_config_file), '--output-dir', str(out), '--epochs', '1',
            '--stage2-epochs', '1', '--report-to', 'tensorboard']
    # One interpreter (each start-up costs seconds): the API check for wandb and `all`, then the command line.
    proc = _python('from mislas_timm.config import ConfigError\nfrom mislas_timm.trackers import check_report_to\n'
                   'for name in ("wandb", "all"):\n'
                   '    try:\n        check_report_to(name)\n        print("passed")\n'
                   '    except ConfigError as err:\n        print(err)\n'
                   f'import runpy\nsys.argv = {argv!r}\nrunpy.run_path("train.py", run_name="__main__")\n')
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ('train.py: error: --report-to tensorboard: TensorBoard is not installed; '
                                   'pip install "mislas-timm[tensorboard]"'), proc.stderr
    assert not out.exists()  # nothing read, trained or written
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == '--report-to wandb: Weights & Biases is not installed; pip install wandb', lines
    # With the packages present but hidden, Accelerate's probe still lists TensorBoard under `all`.
    assert lines[1].startswith('--report-to all: ') and 'pip install "mislas-timm[tensorboard]"' in lines[1], lines
    assert len(lines) == 2


@pytest.mark.slow
def test_tensorboard_run_writes_event_files(tmp_path, tiny_config_file):
    out = tmp_path / 'run'
    proc = subprocess.run([sys.executable, 'train.py', '--config', str(tiny_config_file), '--output-dir', str(out),
                           '--epochs', '1', '--stage2-epochs', '1', '--report-to', 'tensorboard'],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = sorted((out / 'logs').rglob('events.out.tfevents.*'))
    assert events, sorted(p.relative_to(out) for p in out.rglob('*'))
    logged = b''.join(path.read_bytes() for path in events)
    for tag in (b'stage1/loss', b'stage2/loss'):  # the per-epoch scalars of both stages
        assert tag in logged, tag
    assert 'no supported trackers' not in proc.stderr
