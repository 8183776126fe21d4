"""The command lines' names: ``mislas_timm/cli/`` holds the evaluator's and the calibrator's command lines,
and the documented commands ``python -m mislas_timm.evaluate`` / ``python -m mislas_timm.calibrate``
(DESIGN.md section 7) stay aliases of them with the same output, files and exit codes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch

import mislas_timm  # noqa: F401  (registers resnet20_cifar)
from mislas_timm.data.longtail import class_counts, longtail_counts, longtail_indices, split_sha256, validation_split
from mislas_timm.hub import save_hub_folder

from .conftest import TINY_CLASSES
from .test_imports import GRAPH

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')
COMMANDS = ('evaluate', 'calibrate')
# the documented command and the command-line module it is an alias of
PATHS = {name: (f'mislas_timm.{name}', f'mislas_timm.cli.{name}') for name in COMMANDS}


def python_m(module: str, *args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', module, *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory, tiny_dataset_dir) -> Path:
    """An untrained 4-class resnet20_cifar (16 x 16 inputs) whose config.json records a long-tail view of the
    tiny data set with a held-out validation split, so that both commands accept it."""
    import datasets

    labels = datasets.load_from_disk(str(tiny_dataset_dir))['train']['label']
    kept = longtail_indices(labels, longtail_counts(max(class_counts(labels, 4)), 4, 10), 0)
    kept, val = validation_split(labels, kept, 3, 0)
    mislas = {'imb_factor': 10, 'data_seed': 0, 'profile': 'exp', 'val_per_class': 3, 'val_sha256': split_sha256(val),
              'split_sha256': split_sha256(kept), 'class_counts': class_counts([labels[i] for i in kept], 4),
              'rank_split': [1, 3], 'dataset': str(tiny_dataset_dir), 'stage': 1, 'preset': None}
    torch.manual_seed(0)
    model = timm.create_model('resnet20_cifar', num_classes=4).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 16, 16), crop_pct=1.0, mean=(0.5,) * 3,
                                std=(0.25,) * 3, label_names=TINY_CLASSES, num_classes=4)
    return save_hub_folder(model, tmp_path_factory.mktemp('cli-names') / 'tiny', label_names=TINY_CLASSES,
                           mislas=mislas)


def _same_run(old: subprocess.CompletedProcess, new: subprocess.CompletedProcess, old_out: Path, new_out: Path):
    assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    assert 'Traceback' not in old.stderr + new.stderr
    assert 'deprecat' not in (old.stdout + old.stderr).lower()  # the documented command is supported: no warning
    assert old.stdout.replace(str(old_out), 'OUT') == new.stdout.replace(str(new_out), 'OUT')
    assert old.stderr == new.stderr


@pytest.mark.slow
def test_evaluate_old_and_new_paths_agree(tiny_model, tiny_dataset_dir, tmp_path):
    outs = {path: tmp_path / path for path in PATHS['evaluate']}
    old, new = (python_m(path, tiny_model, '--dataset', tiny_dataset_dir, '--out', out, '--batch-size', 16)
                for path, out in outs.items())
    old_out, new_out = outs.values()
    _same_run(old, new, old_out, new_out)
    printed = json.loads(old.stdout[:old.stdout.rindex('}') + 1])
    assert printed['num_samples'] == 40 and 0 <= printed['ece'] <= 1
    assert f'wrote {old_out / "metrics.json"} and {old_out / "reliability.png"}' in old.stdout
    # all but the timings (wall_time_s, read_time_s, images_per_s, ...) are the same
    reports = [{k: v for k, v in json.loads((out / 'metrics.json').read_text()).items() if not k.endswith('_s')}
               for out in (old_out, new_out)]
    assert reports[0] == reports[1]
    assert reports[0]['top1'] == printed['top1']
    assert (old_out / 'reliability.png').is_file() and (new_out / 'reliability.png').is_file()


@pytest.mark.slow
def test_calibrate_old_and_new_paths_agree(tiny_model, tiny_dataset_dir, tmp_path):
    outs = {path: tmp_path / path for path in PATHS['calibrate']}
    old, new = (python_m(path, tiny_model, '--method', 'temperature', '--dataset', tiny_dataset_dir, '--out', out,
                         '--batch-size', 32) for path, out in outs.items())
    old_out, new_out = outs.values()
    _same_run(old, new, old_out, new_out)
    assert 'fitted on 12 validation images' in old.stdout and f'wrote {old_out} (temperature = ' in old.stdout
    configs = [json.loads((out / 'config.json').read_text())['mislas']['posthoc'] for out in (old_out, new_out)]
    for c in configs:  # the recorded command is the documented one, whichever path ran
        assert c.pop('command').startswith('python -m mislas_timm.calibrate ')
    assert configs[0] == configs[1] and configs[0]['fitted_on'] == 'validation'
    assert (old_out / 'model.safetensors').read_bytes() == (new_out / 'model.safetensors').read_bytes()


@pytest.mark.parametrize('name', COMMANDS)
def test_help_is_the_same_on_both_paths(name):
    old, new = (python_m(path, '--help') for path in PATHS[name])
    assert old.returncode == new.returncode == 0, old.stderr + new.stderr
    assert old.stdout == new.stdout and old.stderr == new.stderr == ''
    assert old.stdout.startswith(f'usage: python -m mislas_timm.{name} ')  # the documented command's name


@pytest.mark.parametrize('name', COMMANDS)
def test_bad_source_is_one_line_exit_2_on_both_paths(name, tiny_dataset_dir, tmp_path):
    missing = tmp_path / 'no-such-model'
    args = [missing, '--dataset', tiny_dataset_dir, '--out', tmp_path / 'out']
    if name == 'calibrate':
        args += ['--method', 'temperature']
    old, new = (python_m(path, *args) for path in PATHS[name])
    for result in (old, new):
        assert result.returncode == 2, result.stderr[-2000:]
        assert 'Traceback' not in result.stderr and result.stdout == ''
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f'{name}: error: ') and str(missing) in lines[0], lines
    assert old.stderr == new.stderr
    assert not (tmp_path / 'out').exists()


@pytest.fixture
def keep_package_evaluate():
    """Importing the submodule mislas_timm.evaluate rebinds the package's ``evaluate`` (the function of the
    public API) to that module: undo it, so that later tests in this process call the function."""
    function = mislas_timm.evaluate
    yield
    mislas_timm.evaluate = function
    for name in ('mislas_timm.evaluate', 'mislas_timm.calibrate'):
        sys.modules.pop(name, None)


def test_alias_names_warn_and_are_the_moved_objects(keep_package_evaluate):
    from mislas_timm import calibration
    from mislas_timm.cli import calibrate as cli_calibrate
    from mislas_timm.cli import evaluate as cli_evaluate

    moved = [('mislas_timm.evaluate', 'main', cli_evaluate), ('mislas_timm.evaluate', 'format_shift_table', cli_evaluate),
             ('mislas_timm.calibrate', 'main', cli_calibrate),
             ('mislas_timm.calibrate', 'fit_on_validation', calibration),
             ('mislas_timm.calibrate', 'validation_indices', calibration),
             ('mislas_timm.calibrate', 'require_validation_record', calibration),
             ('mislas_timm.calibrate', 'CalibrationError', calibration)]
    for module, name, home in moved:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            exec(f'from {module} import {name} as found', namespace := {})
        assert namespace['found'] is getattr(home, name), (module, name)
        assert [w.category for w in caught] == [DeprecationWarning], (module, name)
        assert home.__name__ in str(caught[0].message)
    import mislas_timm.calibrate as alias

    with pytest.raises(AttributeError):
        alias.no_such_name


def test_importing_the_alias_keeps_the_package_evaluate_callable(keep_package_evaluate, tiny_model, tiny_dataset_dir):
    """`from mislas_timm.evaluate import main` rebinds mislas_timm.evaluate to the module: it still evaluates."""
    from mislas_timm.evaluation import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        from mislas_timm.evaluate import main  # noqa: F401
    assert isinstance(mislas_timm.evaluate, type(sys))  # the module now, as Python binds it
    model = mislas_timm.load_model(str(tiny_model))
    via_alias = mislas_timm.evaluate(model, str(tiny_dataset_dir), batch_size=64)
    direct = evaluate(model, str(tiny_dataset_dir), batch_size=64)
    for key in ('top1', 'ece', 'nll', 'num_samples'):
        assert via_alias[key] == direct[key], key


def test_only_the_aliases_import_the_cli_package():
    importers = sorted(name for name, targets in GRAPH.items()
                       if not name.startswith('mislas_timm.cli') and any(t.startswith('mislas_timm.cli') for t in targets))
    assert importers == ['mislas_timm.calibrate', 'mislas_timm.evaluate']
    # the command-line modules are wiring: the logic they run lives in evaluation / calibration
    assert 'mislas_timm.evaluation' in GRAPH['mislas_timm.cli.evaluate']
    assert 'mislas_timm.calibration' in GRAPH['mislas_timm.cli.calibrate']
    for logic in ('mislas_timm.evaluation', 'mislas_timm.calibration'):
        assert not any(t.startswith('mislas_timm.cli') for t in GRAPH[logic])
