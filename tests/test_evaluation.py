"""mislas_timm.evaluation: the batched input path, several models on one read and decode, timing of the call."""
from __future__ import annotations

import time

import datasets
import numpy as np
import pytest
import timm
import torch

import mislas_timm  # noqa: F401  (registers resnet20_cifar)
from mislas_timm import evaluation
from mislas_timm.data.hf import ImageClassificationView, build_eval_transform
from mislas_timm.evaluation import DecodedSplit, eval_loader, evaluate, evaluate_many
from mislas_timm.hub import load_model, save_hub_folder

from .conftest import TINY_CLASSES, encode_image, load_benchmark, make_image_dataset

TIMING = ('wall_time_s', 'images_per_s', 'read_time_s')


def tiny_model(seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model('resnet20_cifar', num_classes=4).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (3, 16, 16), 'label_names': TINY_CLASSES, **cfg}
    model.mislas_config = {'class_counts': [30, 20, 10, 5]}
    return model


@pytest.mark.parametrize('cfg,mode', [
    ({}, 'RGB'),                                                               # CIFAR: 16 px in, no resize
    ({'input_size': (3, 12, 12), 'crop_pct': 0.875, 'interpolation': 'bicubic'}, 'RGB'),  # resize 13, crop 12
    ({'input_size': (3, 24, 24), 'mean': (0.5,) * 3, 'std': (0.25,) * 3}, 'RGBA'),  # upscale; alpha on white
])
def test_batched_inputs_equal_timms_transform(cfg, mode):
    """The decoded-once, batch-normalised, channels-last input is timm's per-image eval transform bit for bit."""
    ds = make_image_dataset([3, 2, 2, 3], size=16, mode=mode)
    model = tiny_model(**cfg)
    view = ImageClassificationView(ds, 'img', 'label', build_eval_transform(model))
    expected = torch.stack([view[i][0] for i in range(len(ds))])
    for num_workers in (0, 1):  # decoded ahead / decoded row by row as read
        batches = list(eval_loader(model, ds, 'img', 'label', batch_size=4, num_workers=num_workers))
        images = torch.cat([x for x, _ in batches])
        assert images.shape == expected.shape and torch.equal(images, expected)
        assert all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in batches)
        assert torch.cat([y for _, y in batches]).tolist() == list(ds['label'])


def test_evaluate_many_equals_evaluate_per_model(tiny_dataset_dir, monkeypatch):
    """Several models on ONE read of the split and one decode per input geometry, the same reports."""
    models = [tiny_model(0), tiny_model(1), tiny_model(2, input_size=(3, 12, 12), crop_pct=0.875)]
    singles = [evaluate(m, str(tiny_dataset_dir), batch_size=16) for m in models]

    calls = {'load_split': 0, 'decode': 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(evaluation, 'load_split', counted('load_split', evaluation.load_split))
    monkeypatch.setattr(evaluation, '_decode_all', counted('decode', evaluation._decode_all))
    many = evaluate_many(models, str(tiny_dataset_dir), batch_size=16)
    assert calls == {'load_split': 1, 'decode': 2}  # two geometries: 16 px, and 12 px cropped
    assert len(many) == len(models)
    for single, report in zip(singles, many):
        assert set(single) == set(report)
        assert {k: v for k, v in single.items() if k not in TIMING} == {k: v for k, v in report.items()
                                                                        if k not in TIMING}
    assert singles[0]['top1'] != singles[1]['top1'] or singles[0]['nll'] != singles[1]['nll']  # distinct models
    # the read and decode are shared: each report's wall time is its geometry's plus the model's own pass
    assert many[0]['read_time_s'] == many[1]['read_time_s'] != many[2]['read_time_s']
    assert all(r['wall_time_s'] > r['read_time_s'] > 0 for r in many)

    # the same through a DecodedSplit passed to evaluate(), with shifted subsets too
    data = DecodedSplit(str(tiny_dataset_dir), 'test')
    shifted = evaluate(models[0], data, test_imbalance=5, batch_size=16)
    alone = evaluate(models[0], str(tiny_dataset_dir), test_imbalance=5, batch_size=16)
    assert shifted['test_class_counts'] == alone['test_class_counts'] and shifted['top1'] == alone['top1']
    assert shifted['nll'] == pytest.approx(alone['nll'], rel=1e-6)


def test_decoded_split_refuses_other_settings(tiny_dataset_dir):
    data = DecodedSplit(str(tiny_dataset_dir), 'test')
    assert len(data) == 40 and data.encoding == 'PNG (lossless)'
    with pytest.raises(ValueError, match=r"split='train' was given with a DecodedSplit that has split='test'"):
        evaluate(tiny_model(), data, split='train')
    with pytest.raises(ValueError, match=r'max_samples=5 .* pass it to DecodedSplit'):
        evaluate_many([tiny_model()], data, max_samples=5)


def test_wall_time_covers_the_whole_call(tmp_path):
    """wall_time_s runs from reading the split to the report: a first load of a parquet folder (datasets
    converts it) is in it, and it is never more than the call took."""
    test = make_image_dataset([30] * 4, size=16, seed=2)
    folder = tmp_path / 'fresh'
    (folder / 'data').mkdir(parents=True)
    cells = [{'bytes': encode_image(image, 'PNG'), 'path': None} for image in test['img']]
    datasets.Dataset.from_dict({'img': cells, 'label': test['label']}, features=test.features).to_parquet(
        str(folder / 'data' / 'test-00000-of-00001.parquet'))
    model = tiny_model()
    start = time.perf_counter()
    report = evaluate(model, str(folder), batch_size=64)
    call = time.perf_counter() - start
    assert 0.9 * call <= report['wall_time_s'] <= call
    assert report['images_per_s'] == pytest.approx(120 / report['wall_time_s'])
    assert 0 < report['read_time_s'] < report['wall_time_s']

    start = time.perf_counter()
    reports = evaluate_many([model, tiny_model(1)], str(folder), batch_size=64)
    call = time.perf_counter() - start
    read = reports[0]['read_time_s']
    covered = read + sum(r['wall_time_s'] - read for r in reports)  # the read once, each model's own pass
    assert 0.9 * call <= covered <= call


def test_eval_speed_benchmark_runs(tiny_dataset_dir, tmp_path, capsys):
    folder = save_hub_folder(tiny_model(), tmp_path / 'model', label_names=TINY_CLASSES,
                             mislas={'class_counts': [30, 20, 10, 5]})
    bench = load_benchmark('eval_speed')
    result = bench.main(['--dataset', str(tiny_dataset_dir), '--model', str(folder), '--rounds', '2',
                         '--batch-size', '16', '--many', '2'])
    out = capsys.readouterr().out
    assert 'evaluate / bare:' in out and '| bare fp32 channels-last forward |' in out
    assert 0 < result['ratio'] < 10 and result['same'] == 1.0
    assert np.isfinite([result['bare'], result['call'], result['reported']]).all()
    assert load_model(str(folder)).num_classes == 4
