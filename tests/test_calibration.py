"""Post-hoc calibration (temperature, tau-norm, logit adjustment): fitting, folding, the CLI."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import mislas_timm  # noqa: F401  (registers resnet20_cifar)
from mislas_timm.calibrate import main as calibrate_main
from mislas_timm.calibration import (
    LOGIT_ADJUST_GRID, TAU_NORM_GRID, adjust_logits, calibrate_model, check_logits, class_mean_accuracy,
    fit_logit_adjustment, fit_tau_norm, fit_temperature, fold_logit_adjustment, fold_tau_norm, fold_temperature, nll,
    tau_norm_logits, tau_norm_weights)
from mislas_timm.data.longtail import class_counts, longtail_counts, longtail_indices, split_sha256, validation_split
from mislas_timm.hub import save_hub_folder
from mislas_timm.stage2 import to_stage2

from .conftest import TINY_CLASSES, make_image_dataset

ROOT = Path(__file__).resolve().parents[1]
COUNTS = [50, 20, 8, 3]


def close(actual, expected, rtol=1e-5):
    """Relative comparison at the scale of the expected logits (no bare absolute epsilon)."""
    expected = torch.as_tensor(expected)
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=1e-6 * float(expected.abs().max()))


def features_of(model, x):
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.fixture(scope='module')
def small_model():
    torch.manual_seed(0)
    model = timm.create_model('resnet20_cifar', num_classes=4).eval()
    with torch.no_grad():  # a non-zero bias with a spread of values, so every fold touches it
        model.fc.bias.copy_(torch.tensor([0.5, -0.25, 0.1, -0.8]))
    return model


def synthetic_logits(t0: float, n: int = 20000, k: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    true_logits = 2.0 * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=g).squeeze(1)
    return true_logits * t0, labels


# -------------------------------------------------------------------------- temperature

@pytest.mark.parametrize('t0', [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(t0):
    logits, labels = synthetic_logits(t0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(t0, rel=0.05)
    assert fit_temperature(logits, labels) == t  # deterministic
    assert fit_temperature(logits.float(), labels) == pytest.approx(t, rel=1e-6)


def test_fitted_temperature_minimises_nll():
    logits, labels = synthetic_logits(1.7, n=3000, k=5, seed=3)
    t = fit_temperature(logits, labels)
    best = nll(logits, labels, t)
    for other in (1.0, t * 1.1, t / 1.1, t * 1.001, t / 1.001):
        assert best <= nll(logits, labels, other)


def test_fit_temperature_refuses_separable_and_uninformative_logits():
    labels = torch.arange(4).repeat(5)
    separable = torch.nn.functional.one_hot(labels, 4).double() * 5
    with pytest.raises(ValueError, match='separate the validation labels'):
        fit_temperature(separable, labels)
    with pytest.raises(ValueError, match='no information'):
        fit_temperature(-separable, labels)


def test_fold_temperature_matches_scaled_logits(small_model):
    model = copy.deepcopy(small_model).double()
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x) / 1.7
        folded = fold_temperature(model, 1.7)
        close(folded(x), expected)
    assert folded is not model and isinstance(folded.get_classifier(), torch.nn.Linear)
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k]), k


# -------------------------------------------------------------------------- tau-norm

def test_tau_norm_weights_formula():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    w1, b1 = tau_norm_weights(w, b, 1.0)
    close(w1, torch.tensor([[0.6, 0.8], [0.0, 1.0]], dtype=torch.float64))
    close(b1, torch.tensor([0.2, -0.5], dtype=torch.float64))
    w0, b0 = tau_norm_weights(w, b, 0.0)
    close(w0, w)
    close(b0, b)
    _, bd = tau_norm_weights(w, b, 0.5, bias_mode='drop')
    assert torch.equal(bd, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize('bias_mode', ['scale', 'drop'])
@pytest.mark.parametrize('tau', [0.0, 0.35, 1.0, 1.8])
def test_fold_tau_norm_matches_unfolded(small_model, tau, bias_mode):
    model = copy.deepcopy(small_model).double()
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    feats = features_of(model, x)
    w, b = model.fc.weight.detach(), model.fc.bias.detach()
    norms = torch.sqrt((w ** 2).sum(1))
    expected = feats @ (w / norms[:, None] ** tau).T + (b / norms ** tau if bias_mode == 'scale' else 0)
    with torch.no_grad():
        close(fold_tau_norm(model, tau, bias_mode)(x), expected)
    close(tau_norm_logits(feats, w, b, tau, bias_mode), expected)


def tau_norm_problem(seed=0, n_per_class=(40, 40, 40, 40), d=6):
    """Features whose classifier has head classes with large weight norms: tau-norm helps the tail."""
    g = torch.Generator().manual_seed(seed)
    k = len(n_per_class)
    w = torch.randn(k, d, generator=g, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0, 0.5])[:k, None]
    b = torch.tensor([0.3, 0.1, -0.1, -0.3], dtype=torch.float64)[:k]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    directions = torch.nn.functional.normalize(w, dim=1)
    feats = 1.5 * directions[labels] + torch.randn(len(labels), d, generator=g, dtype=torch.float64)
    return feats, labels, w, b


def brute_force_accuracy(logits, labels):
    """Class-mean accuracy written as a plain loop (independent of class_mean_accuracy)."""
    pred = logits.argmax(1)
    accs = [float((pred[labels == c] == c).double().mean()) for c in range(logits.shape[1])]
    return sum(accs) / len(accs)


@pytest.mark.parametrize('bias_mode', ['scale', 'drop'])
def test_fit_tau_norm_maximises_validation_accuracy(bias_mode):
    feats, labels, w, b = tau_norm_problem()
    tau = fit_tau_norm(feats, labels, w, b, bias_mode=bias_mode)
    scores = {t: brute_force_accuracy(tau_norm_logits(feats, w, b, t, bias_mode), labels) for t in TAU_NORM_GRID}
    best = max(scores.values())
    assert scores[tau] == best
    assert tau == min(t for t, s in scores.items() if s == best)  # ties to the smaller tau
    assert tau in TAU_NORM_GRID


def test_fit_tau_norm_ties_go_to_the_smallest_tau():
    feats, labels, w, b = tau_norm_problem()
    w = torch.nn.functional.normalize(w, dim=1) * 2.0  # equal norms: every tau predicts the same
    assert fit_tau_norm(feats, labels, w, b, taus=[1.5, 0.5, 1.0]) == 0.5


# -------------------------------------------------------------------------- logit adjustment

def test_fold_logit_adjustment_matches_adjusted_logits(small_model):
    model = copy.deepcopy(small_model).double()
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        z = model(x)
        prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
        expected = z - 0.7 * torch.log(prior)
        close(fold_logit_adjustment(model, COUNTS, 0.7)(x), expected)
    close(adjust_logits(z, COUNTS, 0.7), expected)


def test_fit_logit_adjustment_maximises_validation_accuracy():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat_interleave(50)
    # logits biased towards the head classes by log(prior), as a classifier trained on COUNTS would be
    noise = torch.randn(200, 4, generator=g, dtype=torch.float64)
    logits = 2.0 * torch.nn.functional.one_hot(labels, 4).double() + noise
    logits = logits + torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS))
    tau = fit_logit_adjustment(logits, labels, COUNTS)
    scores = {t: brute_force_accuracy(adjust_logits(logits, COUNTS, t), labels) for t in LOGIT_ADJUST_GRID}
    best = max(scores.values())
    assert scores[tau] == best and tau == min(t for t, s in scores.items() if s == best)
    assert tau > 0 and scores[tau] > scores[0.0]
    assert class_mean_accuracy(adjust_logits(logits, COUNTS, tau), labels) == pytest.approx(best, abs=1e-12)


# -------------------------------------------------------------------------- Hub round trip

@pytest.mark.parametrize('method', ['temperature', 'tau_norm', 'logit_adjust'])
def test_folded_model_loads_through_timm_local_dir(small_model, tmp_path, method):
    model = copy.deepcopy(small_model)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 16, 16), crop_pct=1.0)
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(80, model.num_features, generator=g).abs()
    with torch.no_grad():
        labels = model.fc(feats).argmax(1)
    labels[::3] = torch.arange(4).repeat(10)[:len(labels[::3])]  # every class present, some mistakes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new, fitted = calibrate_model(model, method, feats, labels, COUNTS)
    assert fitted['method'] == method and new is not model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # input untouched
    assert not torch.equal(new.fc.weight, model.fc.weight) or not torch.equal(new.fc.bias, model.fc.bias) \
        or fitted.get('tau') == 0.0
    folder = save_hub_folder(new, tmp_path / method, label_names=TINY_CLASSES,
                             mislas={'class_counts': COUNTS, 'posthoc': fitted})
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        close(loaded(x), new(x))
    assert isinstance(loaded.get_classifier(), torch.nn.Linear)
    assert json.loads((folder / 'config.json').read_text())['mislas']['posthoc']['method'] == method


# -------------------------------------------------------------------------- bad input

def test_probabilities_are_refused():
    logits, labels = synthetic_logits(1.0, n=50, k=4)
    for fn in (lambda p: fit_temperature(p, labels), lambda p: fit_logit_adjustment(p, labels, COUNTS),
               lambda p: check_logits(p)):
        with pytest.raises(ValueError, match='these look like probabilities.*pass logits'):
            fn(logits.softmax(1))
    check_logits(logits.log_softmax(1), labels)  # log-probabilities are logits
    # bf16 probabilities sum to 1 only within bf16's rounding (~0.4%): still refused.
    wide = torch.randn(1000, 100, generator=torch.Generator().manual_seed(0)) * 3
    assert float((wide.softmax(1).bfloat16().double().sum(1) - 1).abs().max()) > 1e-3
    with pytest.raises(ValueError, match='these look like probabilities'):
        check_logits(wide.softmax(1).bfloat16())
    check_logits(wide.bfloat16())


def test_empty_validation_class_is_named():
    feats, labels, w, b = tau_norm_problem(n_per_class=(10, 10, 0, 10))
    with pytest.raises(ValueError, match=r'^class 2 of 4 has no validation sample'):
        fit_tau_norm(feats, labels, w, b)
    logits = feats @ w.T + b
    with pytest.raises(ValueError, match=r'^class 2 of 4 has no validation sample'):
        fit_logit_adjustment(logits, labels, COUNTS)


def _without_bias(model):
    import copy
    model = copy.deepcopy(model)
    fc = model.get_classifier()
    model.fc = torch.nn.Linear(fc.in_features, fc.out_features, bias=False)
    return model


def test_bad_inputs_raise_one_line_errors(small_model):
    logits, labels = synthetic_logits(1.0, n=40, k=4)
    cases = [
        (lambda: calibrate_model(small_model, 'platt', torch.randn(8, 64), labels[:8]), 'unknown post-hoc method'),
        (lambda: fit_temperature(logits, labels[:30]), '40 rows of logits but 30 labels'),
        (lambda: fit_temperature(logits, labels + 4), r'labels must lie in \[0, 3\]'),
        (lambda: fit_temperature(logits, labels.double()), 'integer class indices'),
        (lambda: fit_logit_adjustment(logits, labels, [5, 0, 3, 2]), 'class 1 has 0 training images'),
        (lambda: fit_logit_adjustment(logits, labels, [5, 3, 2]), 'class_counts has 3 classes'),
        (lambda: fit_tau_norm(torch.randn(40, 5), labels, torch.randn(4, 6)), 'features have 5 dimensions'),
        (lambda: fit_tau_norm(torch.randn(40, 6), labels, torch.randn(4, 6), bias_mode='keep'), 'bias_mode must be'),
        (lambda: fold_temperature(small_model, -1.0), 'temperature must be a finite number > 0'),
        (lambda: fold_tau_norm(to_stage2(small_model), 1.0), 'fold_head'),
        (lambda: fit_temperature(torch.full((4, 3), float('nan')), labels[:4]), 'NaN or inf'),
        # A bias-free classifier is refused before the fit (these labels would fail the fit otherwise).
        (lambda: calibrate_model(_without_bias(small_model), 'logit_adjust', torch.randn(8, 64), labels[:8] * 0,
                                 COUNTS), 'no bias to fold the logit adjustment into'),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert '\n' not in str(info.value)


# -------------------------------------------------------------------------- CLI

VAL_PER_CLASS = 5
IMB_FACTOR = 10


@pytest.fixture(scope='module')
def noisy_dataset_dir(tmp_path_factory) -> Path:
    """Tiny colour data with 25% of the training labels permuted (per-class counts unchanged), so a
    trained model is right most of the time but not always (a finite temperature exists)."""
    import datasets

    folder = tmp_path_factory.mktemp('calib') / 'noisy-colours'
    train = make_image_dataset([60] * 4, seed=0)
    labels = np.array(train['label'])
    rng = np.random.RandomState(0)
    picked = rng.choice(len(labels), len(labels) // 4, replace=False)
    labels[picked] = labels[rng.permutation(picked)]
    features = train.features
    train = train.remove_columns('label').add_column('label', labels.tolist()).cast(features)
    test = make_image_dataset([10] * 4, seed=1)
    datasets.DatasetDict({'train': train, 'test': test}).save_to_disk(str(folder))
    return folder


def _mislas_block(train_labels, dataset_dir):
    n_max = max(class_counts(train_labels, 4))
    counts = longtail_counts(n_max, 4, IMB_FACTOR)
    kept = longtail_indices(train_labels, counts, 0)
    kept, val = validation_split(train_labels, kept, VAL_PER_CLASS, 0)
    return kept, {'imb_factor': IMB_FACTOR, 'data_seed': 0, 'profile': 'exp', 'val_per_class': VAL_PER_CLASS,
                  'val_sha256': split_sha256(val), 'split_sha256': split_sha256(kept),
                  'class_counts': class_counts([train_labels[i] for i in kept], 4), 'rank_split': [1, 3],
                  'dataset': str(dataset_dir), 'stage': 1, 'preset': None}


@pytest.fixture(scope='module')
def trained_folder(tmp_path_factory, noisy_dataset_dir) -> Path:
    """A resnet20_cifar trained for a few steps on the long-tail view, saved with its mislas block."""
    import datasets

    from mislas_timm.data.hf import build_eval_transform

    train = datasets.load_from_disk(str(noisy_dataset_dir))['train']
    labels = train['label']
    kept, mislas = _mislas_block(labels, noisy_dataset_dir)
    torch.manual_seed(0)
    model = timm.create_model('resnet20_cifar', num_classes=4)
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 16, 16), crop_pct=1.0, mean=(0.5,) * 3,
                                std=(0.25,) * 3, label_names=TINY_CLASSES, num_classes=4)
    transform = build_eval_transform(model)
    x = torch.stack([transform(train[int(i)]['img']) for i in kept])
    y = torch.tensor([labels[int(i)] for i in kept])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        idx = torch.randint(0, len(y), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_hub_folder(model, tmp_path_factory.mktemp('model') / 'tiny-lt', label_names=TINY_CLASSES,
                           mislas=mislas)


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_end_to_end(trained_folder, noisy_dataset_dir, tmp_path):
    out = tmp_path / 'calibrated'
    env = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')
    run = subprocess.run([sys.executable, '-m', 'mislas_timm.calibrate', str(trained_folder), '--method', 'temperature',
                          '--dataset', str(noisy_dataset_dir), '--out', str(out), '--batch-size', '32'],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert 'before' in run.stdout and 'after' in run.stdout and 'T = ' in run.stdout
    for name in ('README.md', 'config.json', 'model.safetensors', 'metrics.json', 'reliability.png'):
        assert (out / name).is_file(), name
    config = json.loads((out / 'config.json').read_text())
    posthoc = config['mislas']['posthoc']
    recorded = json.loads((trained_folder / 'config.json').read_text())['mislas']
    assert posthoc['method'] == 'temperature' and posthoc['fitted_on'] == 'validation'
    assert posthoc['val_sha256'] == recorded['val_sha256'] and posthoc['num_val'] == 4 * VAL_PER_CLASS
    assert config['mislas']['class_counts'] == recorded['class_counts']
    t = posthoc['temperature']
    card = (out / 'README.md').read_text()
    assert 'temperature scaling' in card and f'T = {t:.4f}' in card
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['split'] == 'test' and 'uncalibrated' in metrics
    assert metrics['top1'] == pytest.approx(metrics['uncalibrated']['top1'])  # T > 0 keeps the argmax

    # the written model is the source model with W / T, b / T, loadable by plain timm
    source = mislas_timm.load_model(str(trained_folder))
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        close(loaded(x), source(x) / t, rtol=1e-4)

    # and T is the NLL minimiser on the rebuilt validation split
    import datasets

    from mislas_timm.calibrate import validation_indices
    from mislas_timm.calibration import predict_features
    from mislas_timm.evaluation import eval_loader

    train = datasets.load_from_disk(str(noisy_dataset_dir))['train']
    val = validation_indices(train['label'], recorded, 4)
    assert split_sha256(val) == recorded['val_sha256']
    _, logits, labels = predict_features(source, eval_loader(source, train.select(val.tolist()), 'img', 'label', 64))
    assert t == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


@pytest.mark.parametrize('method', ['tau_norm', 'logit_adjust'])
def test_cli_grid_methods(trained_folder, noisy_dataset_dir, tmp_path, capsys, method):
    out = tmp_path / method
    assert calibrate_main([str(trained_folder), '--method', method, '--dataset', str(noisy_dataset_dir),
                           '--out', str(out), '--batch-size', '64']) == 0
    posthoc = json.loads((out / 'config.json').read_text())['mislas']['posthoc']
    assert posthoc['method'] == method and posthoc['tau'] in posthoc['grid']
    assert posthoc['val_after']['top1'] >= posthoc['val_before']['top1']  # tau = 0 (the input model) is in the grid
    assert f'tau = {posthoc["tau"]:g}' in (out / 'README.md').read_text()


def test_cli_refuses_bad_method_and_missing_arguments(trained_folder, noisy_dataset_dir, tmp_path, capsys):
    out = tmp_path / 'never'
    assert calibrate_main([str(trained_folder), '--method', 'platt', '--dataset', str(noisy_dataset_dir),
                           '--out', str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "unknown --method 'platt'" in line and 'temperature, tau_norm, logit_adjust' in line
    with pytest.raises(SystemExit) as info:
        calibrate_main([str(trained_folder), '--dataset', str(noisy_dataset_dir), '--out', str(out)])
    assert info.value.code == 2
    assert '--method' in _one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_cli_refuses_model_without_validation_split(trained_folder, noisy_dataset_dir, tmp_path, capsys):
    config = json.loads((trained_folder / 'config.json').read_text())
    mislas = {k: v for k, v in config['mislas'].items() if k not in ('val_sha256', 'val_per_class')}
    folder = save_hub_folder(timm.create_model(f'local-dir:{trained_folder}', pretrained=True), tmp_path / 'noval',
                             label_names=TINY_CLASSES, mislas=mislas)
    out = tmp_path / 'never'
    assert calibrate_main([str(folder), '--method', 'temperature', '--dataset', str(noisy_dataset_dir),
                           '--out', str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert 'trained without a held-out validation split' in line and 'retrain with' in line
    assert not out.exists()


def test_cli_refuses_other_validation_split(trained_folder, noisy_dataset_dir, tmp_path, capsys):
    config = json.loads((trained_folder / 'config.json').read_text())
    mislas = dict(config['mislas'], data_seed=1)  # a different seed draws a different validation split
    folder = save_hub_folder(timm.create_model(f'local-dir:{trained_folder}', pretrained=True), tmp_path / 'seed1',
                             label_names=TINY_CLASSES, mislas=mislas)
    out = tmp_path / 'never'
    assert calibrate_main([str(folder), '--method', 'logit_adjust', '--dataset', str(noisy_dataset_dir),
                           '--out', str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert 'is not the one the model recorded' in line
    assert not out.exists()


def test_validation_from_a_list_is_not_rebuilt_from_the_record():
    from mislas_timm.calibrate import CalibrationError, require_validation_record
    require_validation_record({'val_source': 'held out of the training split', 'val_sha256': 'ab', 'val_per_class': 20})
    with pytest.raises(CalibrationError, match=r"came from split validation; .* own validation logits"):
        require_validation_record({'val_source': 'split validation'})
    with pytest.raises(CalibrationError, match='retrain with --set longtail.val_per_class=20'):
        require_validation_record({'val_source': 'held out of the training split'})


def test_cli_warns_when_calibrating_on_a_copy_stored_otherwise(trained_folder, noisy_dataset_dir, tmp_path, capsys):
    """A model trained on original pixels, calibrated on a JPEG copy of its data: one warning line naming
    both encodings (the training and test splits together), then the run as usual (exit 0)."""
    import shutil

    import datasets

    from .conftest import encode_image

    model = tmp_path / 'png-trained'
    shutil.copytree(trained_folder, model)
    config = json.loads((model / 'config.json').read_text())
    config['mislas']['image_encoding'] = 'PNG (lossless)'
    (model / 'config.json').write_text(json.dumps(config))
    jpeg = tmp_path / 'noisy-jpeg'
    splits = {}
    for split, ds in datasets.load_from_disk(str(noisy_dataset_dir)).items():
        cells = [{'bytes': encode_image(image, 'JPEG', quality=75), 'path': None} for image in ds['img']]
        splits[split] = datasets.Dataset.from_dict({'img': cells, 'label': ds['label']}, features=ds.features)
    datasets.DatasetDict(splits).save_to_disk(str(jpeg))
    capsys.readouterr()  # the save's progress bars

    out = tmp_path / 'calibrated'
    assert calibrate_main([str(model), '--method', 'temperature', '--dataset', str(jpeg), '--out', str(out),
                           '--batch-size', '64']) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f'calibrate: warning: {model} was trained on images stored as PNG (lossless) but '
                             f'{jpeg} (train and test splits) holds JPEG quality 75'), err[0]
    assert (out / 'metrics.json').is_file()
    # the copy it was trained on: no warning
    assert calibrate_main([str(model), '--method', 'temperature', '--dataset', str(noisy_dataset_dir), '--out',
                           str(tmp_path / 'calibrated-png'), '--batch-size', '64']) == 0
    assert not capsys.readouterr().err.strip()


def test_evaluate_held_out_measures_the_rebuilt_validation_split(trained_folder, noisy_dataset_dir, tmp_path, capsys):
    """`evaluate --held-out`: the model's own validation rows (what models are chosen on), never the test
    split; its numbers are those of the report computed directly on the rebuilt indices."""
    import datasets

    from mislas_timm.calibration import validation_indices
    from mislas_timm.cli.evaluate import main as evaluate_main
    from mislas_timm.evaluation import evaluate

    out = tmp_path / 'val'
    assert evaluate_main([str(trained_folder), '--dataset', str(noisy_dataset_dir), '--held-out', '--out', str(out),
                          '--batch-size', '64']) == 0
    report = json.loads((out / 'metrics.json').read_text())
    recorded = json.loads((trained_folder / 'config.json').read_text())['mislas']
    assert report['split'] == 'train[held-out]' and report['val_sha256'] == recorded['val_sha256']
    assert report['num_samples'] == 4 * VAL_PER_CLASS

    train = datasets.load_from_disk(str(noisy_dataset_dir))['train']
    val = validation_indices(train['label'], recorded, 4)
    direct = evaluate(mislas_timm.load_model(str(trained_folder)), train.select(val.tolist()), batch_size=64)
    for key in ('top1', 'ece', 'nll', 'brier'):
        assert report[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9), key
    test = evaluate(mislas_timm.load_model(str(trained_folder)), str(noisy_dataset_dir), batch_size=64)
    assert test['num_samples'] != report['num_samples']  # the test split is another set of images

    # one line, before any work, for what --held-out cannot mean
    capsys.readouterr()
    assert evaluate_main([str(trained_folder), '--dataset', str(noisy_dataset_dir), '--held-out',
                          '--test-imbalance', '10']) == 2
    assert _one_line_error(capsys.readouterr().err).startswith('evaluate: error: --held-out evaluates')


def test_beyond_paper_rule_reads_validation_only_and_picks_top1_then_nll(trained_folder, noisy_dataset_dir):
    """benchmarks/beyond_paper.py (issue 21's pre-registered rule): a candidate's validation numbers are those of
    evaluate --held-out before temperature, temperature does not raise the NLL nor move top-1, and the choice is
    the highest validation top-1, a tie going to the lower NLL."""
    from mislas_timm.calibration import held_out_validation
    from mislas_timm.evaluation import evaluate

    from .conftest import load_benchmark

    bench = load_benchmark('beyond_paper')
    row = bench.validation_row(str(trained_folder), str(noisy_dataset_dir))
    model = mislas_timm.load_model(str(trained_folder))
    val, idx, _, _ = held_out_validation(model, str(noisy_dataset_dir))
    direct = evaluate(model, val, batch_size=64)
    assert row['num_val'] == len(idx) == 4 * VAL_PER_CLASS
    for key in ('top1', 'ece', 'nll'):
        assert row['before'][key] == pytest.approx(direct[key], rel=1e-5, abs=1e-9), key
    assert row['after']['top1'] == row['before']['top1'] and row['after']['nll'] <= row['before']['nll'] + 1e-12

    def r(top1, nll):
        return {'after': {'top1': top1, 'nll': nll}}
    assert bench.choose({'a': r(0.795, 0.65), 'b': r(0.795, 0.62), 'c': r(0.79, 0.50)}) == 'b'
    assert bench.choose({'a': r(0.80, 0.70), 'b': r(0.795, 0.62)}) == 'a'
