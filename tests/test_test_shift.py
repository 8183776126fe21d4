"""Shifted test distributions (test-agnostic long-tail protocol of LADE / SADE): counts, seeds, evaluator CLI."""
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from mislas_timm.data.label_shift import (max_test_imbalance, shift_name, shifted_test_counts, shifted_test_indices,
                                          training_order)
from mislas_timm.evaluation import default_shifts, evaluate, evaluate_shifts
from mislas_timm.hub import load_model, save_hub_folder
from mislas_timm.metrics import REPORT_KEYS

from .conftest import TINY_CLASSES
from .test_training import one_line_error

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
TINY_TRAIN_COUNTS = [15, 60, 6, 30]  # training order (descending): classes 1, 3, 0, 2
SHIFT_KEYS = ('test_imbalance', 'test_profile', 'test_seed', 'test_class_counts')


def formula(n, k, r, rank):
    """The docstring's formula: rank r of K keeps floor(n * R ** (-r / (K - 1)))."""
    return math.floor(n * r ** (-rank / (k - 1)))


def balanced_labels(k, n, seed=0):
    labels = np.repeat(np.arange(k), n)
    return np.random.RandomState(seed).permutation(labels)  # classes interleaved, as in a real split


def kept_counts(labels, idx, k):
    return np.bincount(np.asarray(labels)[idx], minlength=k).tolist()


# ---------------------------------------------------------------- the pure index selection


def test_forward_counts_follow_the_formula():
    labels = balanced_labels(4, 20)
    expected = [formula(20, 4, 10, i) for i in range(4)]
    assert expected == [20, 9, 4, 2]
    idx = shifted_test_indices(labels, [100, 50, 20, 10], 10, 'forward', seed=0)
    assert kept_counts(labels, idx, 4) == expected
    assert shifted_test_counts(20, [100, 50, 20, 10], 10, 'forward') == expected
    assert list(idx) == sorted(set(idx.tolist()))  # ascending, no repeats
    # a larger set: every class follows the formula, the first keeps n and the last n / R
    labels = balanced_labels(10, 100)
    idx = shifted_test_indices(labels, list(range(100, 0, -10)), 50, 'forward', seed=3)
    assert kept_counts(labels, idx, 10) == [formula(100, 10, 50, i) for i in range(10)]
    assert kept_counts(labels, idx, 10)[0] == 100 and kept_counts(labels, idx, 10)[-1] == 2


def test_backward_reverses_the_counts():
    labels = balanced_labels(4, 20)
    forward = kept_counts(labels, shifted_test_indices(labels, [100, 50, 20, 10], 10, 'forward'), 4)
    backward = kept_counts(labels, shifted_test_indices(labels, [100, 50, 20, 10], 10, 'backward'), 4)
    assert backward == forward[::-1] == [2, 4, 9, 20]  # the rarest training class keeps n


def test_imbalance_one_keeps_everything():
    labels = balanced_labels(4, 20)
    for profile in ('forward', 'backward'):
        assert shifted_test_indices(labels, [100, 50, 20, 10], 1, profile, seed=5).tolist() == list(range(80))
    unbalanced = [0] * 7 + [1] * 3 + [2] * 5
    assert shifted_test_indices(unbalanced, [3, 2, 1], 1).tolist() == list(range(15))


def test_seed_decides_which_images():
    labels = balanced_labels(4, 20)
    a = shifted_test_indices(labels, [100, 50, 20, 10], 10, 'forward', seed=0)
    b = shifted_test_indices(labels, [100, 50, 20, 10], 10, 'forward', seed=0)
    c = shifted_test_indices(labels, [100, 50, 20, 10], 10, 'forward', seed=1)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    assert kept_counts(labels, a, 4) == kept_counts(labels, c, 4)  # same counts, other images


def test_training_order_with_unsorted_counts():
    train_counts = [15, 60, 6, 30, 30]  # order: 1, 3, 4 (tie: lower index first), 0, 2
    assert training_order(train_counts) == [1, 3, 4, 0, 2]
    labels = balanced_labels(5, 20)
    per_rank = [formula(20, 5, 10, i) for i in range(5)]
    expected = [0] * 5
    for rank, c in enumerate([1, 3, 4, 0, 2]):
        expected[c] = per_rank[rank]
    forward = kept_counts(labels, shifted_test_indices(labels, train_counts, 10, 'forward'), 5)
    assert forward == expected
    backward = kept_counts(labels, shifted_test_indices(labels, train_counts, 10, 'backward'), 5)
    assert backward[2] == 20 and backward[1] == formula(20, 5, 10, 4)


def test_unbalanced_split_uses_the_smallest_class():
    labels = [0] * 30 + [1] * 12 + [2] * 20
    idx = shifted_test_indices(labels, [3, 2, 1], 4, 'forward')
    assert kept_counts(labels, idx, 3) == [formula(12, 3, 4, i) for i in range(3)] == [12, 6, 3]
    assert max_test_imbalance(labels) == 12


def test_bad_shifts_are_one_line_value_errors():
    labels = balanced_labels(4, 20)
    with pytest.raises(ValueError, match='>= 1'):
        shifted_test_indices(labels, [4, 3, 2, 1], 0.5)
    with pytest.raises(ValueError, match="unknown test profile 'sideways'"):
        shifted_test_indices(labels, [4, 3, 2, 1], 10, 'sideways')
    with pytest.raises(ValueError, match='largest allowed test imbalance is 20') as info:
        shifted_test_indices(labels, [4, 3, 2, 1], 21)
    assert '\n' not in str(info.value)
    # R = n is allowed, even where n * (1 / n) rounds below 1 in floating point (n = 49)
    labels49 = balanced_labels(3, 49)
    assert kept_counts(labels49, shifted_test_indices(labels49, [3, 2, 1], 49), 3) == [49, 7, 1]
    with pytest.raises(ValueError, match='class 2 has no test images'):
        shifted_test_indices([0, 1, 0, 1], [3, 2, 1], 2)


def test_shift_names_and_default_table():
    assert shift_name(50, 'forward') == 'forward-50' and shift_name(2.5, 'backward') == 'backward-2.5'
    assert shift_name(1, 'backward') == 'uniform'
    assert default_shifts((50, 10)) == [(50, 'forward'), (10, 'forward'), (1, 'forward'), (10, 'backward'),
                                        (50, 'backward')]


# ---------------------------------------------------------------- evaluation and the evaluator CLI


def _tiny_model(folder: Path, class_counts=TINY_TRAIN_COUNTS) -> Path:
    torch.manual_seed(0)
    model = timm.create_model('resnet20_cifar', num_classes=4).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 16, 16), label_names=TINY_CLASSES)
    mislas = {'class_counts': class_counts, 'rank_split': [1, 3]} if class_counts else {'preset': 'none'}
    return save_hub_folder(model, folder, label_names=TINY_CLASSES, mislas=mislas)


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp('shift-models')
    return _tiny_model(root / 'with-counts'), _tiny_model(root / 'no-counts', class_counts=None)


def evaluator(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'mislas_timm.evaluate', *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=timeout)


def test_evaluate_shifts_equals_evaluating_each_subset(tiny_models, tiny_dataset_dir):
    import datasets

    model = load_model(str(tiny_models[0]))
    test = datasets.load_from_disk(str(tiny_dataset_dir))['test']
    shifts = [(10, 'forward'), (2, 'forward'), (1, 'forward'), (10, 'backward')]
    reports = evaluate_shifts(model, test, shifts, seed=3, batch_size=16)
    assert list(reports) == ['forward-10', 'forward-2', 'uniform', 'backward-10']
    # training order of [15, 60, 6, 30]: classes 1, 3, 0, 2; n = 10 test images per class
    per_rank = [formula(10, 4, 10, i) for i in range(4)]
    assert per_rank == [10, 4, 2, 1]
    assert reports['forward-10']['test_class_counts'] == [per_rank[i] for i in (2, 0, 3, 1)] == [2, 10, 1, 4]
    assert reports['backward-10']['test_class_counts'] == [4, 1, 10, 2]
    assert reports['uniform']['test_class_counts'] == [10] * 4 and reports['uniform']['num_samples'] == 40
    for name, (r, profile) in zip(reports, shifts):
        single = evaluate(model, test, test_imbalance=r, test_profile=profile, test_seed=3, batch_size=16)
        assert set(REPORT_KEYS) | set(SHIFT_KEYS) <= set(single) and set(single) == set(reports[name])
        assert (single['test_imbalance'], single['test_profile'], single['test_seed']) == (r, profile, 3)
        assert single['test_class_counts'] == reports[name]['test_class_counts']
        assert single['num_samples'] == sum(single['test_class_counts'])
        for key in ('top1', 'ece', 'nll', 'few_top1'):
            assert single[key] == pytest.approx(reports[name][key], abs=1e-5), (name, key)
    plain = evaluate(model, test, batch_size=16)  # the default stays the whole split
    assert plain['num_samples'] == 40 and plain['test_imbalance'] == 1 and plain['test_class_counts'] == [10] * 4


def test_evaluator_cli_shifted_test_and_table(tiny_models, tiny_dataset_dir, tmp_path):
    out = tmp_path / 'out'
    result = evaluator(tiny_models[0], '--dataset', tiny_dataset_dir, '--test-imbalance', '10', '--test-profile',
                       'backward', '--test-seed', '2', '--shift-table', '10,2', '--out', out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / 'metrics.json').read_text())
    assert set(REPORT_KEYS) <= set(metrics)
    assert (metrics['test_imbalance'], metrics['test_profile'], metrics['test_seed']) == (10, 'backward', 2)
    assert metrics['test_class_counts'] == [4, 1, 10, 2] and metrics['num_samples'] == 17
    shifts = json.loads((out / 'shifts.json').read_text())
    assert list(shifts) == ['forward-10', 'forward-2', 'uniform', 'backward-2', 'backward-10']
    assert shifts['backward-10'] == metrics | {'wall_time_s': shifts['backward-10']['wall_time_s'],
                                               'images_per_s': shifts['backward-10']['images_per_s']}
    table = result.stdout[result.stdout.index('test distribution'):].splitlines()
    assert table[0].split()[2:] == list(shifts)
    assert table[1].split()[1:] == [str(shifts[n]['num_samples']) for n in shifts]
    assert table[2].startswith('top-1 (%)') and table[3].startswith('ECE (%)')
    assert [float(v) for v in table[2].split()[2:]] == [round(100 * shifts[n]['top1'], 2) for n in shifts]
    assert [float(v) for v in table[3].split()[2:]] == pytest.approx([100 * shifts[n]['ece'] for n in shifts],
                                                                    abs=0.006)


def test_evaluator_cli_bad_shifts(tiny_models, tiny_dataset_dir, tmp_path):
    with_counts, no_counts = tiny_models
    out = tmp_path / 'bad'
    one_line_error(evaluator(with_counts, '--dataset', tiny_dataset_dir, '--test-imbalance', '0.5', '--out', out),
                   '--test-imbalance', '>= 1')
    one_line_error(evaluator(with_counts, '--dataset', tiny_dataset_dir, '--test-imbalance', '11', '--out', out),
                   'largest allowed test imbalance is 10')
    one_line_error(evaluator(with_counts, '--dataset', tiny_dataset_dir, '--shift-table', '50', '--out', out),
                   'largest allowed test imbalance is 10')
    one_line_error(evaluator(no_counts, '--dataset', tiny_dataset_dir, '--test-imbalance', '10', '--out', out),
                   'class_counts', 'config.json', '--test-imbalance 1')
    one_line_error(evaluator(with_counts, '--dataset', tiny_dataset_dir, '--test-imbalance', '10', '--test-profile',
                             'sideways', '--out', out), "unknown test profile 'sideways'", 'forward, backward')
    assert not out.exists()


def test_the_old_module_name_is_a_deprecated_alias(monkeypatch, tmp_path):
    """mislas_timm.data.test_shift (named like a test file) moved to label_shift: the old name still imports, gives
    the same objects, and warns, attributed to the importing line (so a user's script sees it)."""
    import mislas_timm.data.label_shift as label_shift

    monkeypatch.delitem(sys.modules, 'mislas_timm.data.test_shift', raising=False)  # import it afresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        import mislas_timm.data.test_shift as alias
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1 and 'mislas_timm.data.label_shift' in str(deprecations[0].message)
    # Outside pytest (whose import hook takes test_*.py for a test module and sits in between): a user's script.
    script = tmp_path / 'user_script.py'
    script.write_text('import sys\nimport mislas_timm\nsys.modules.pop("mislas_timm.data.test_shift", None)\n'
                      'from mislas_timm.data.test_shift import shifted_test_counts\n')
    result = subprocess.run([sys.executable, '-W', 'always::DeprecationWarning', str(script)], capture_output=True,
                            text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'{script}:4: DeprecationWarning: mislas_timm.data.test_shift is deprecated: import from ' \
           'mislas_timm.data.label_shift' in result.stderr, result.stderr[-2000:]
    assert alias.__all__ == label_shift.__all__ and 'deprecated' in alias.__doc__.splitlines()[0].lower()
    for name in label_shift.__all__:
        assert getattr(alias, name) is getattr(label_shift, name), name
