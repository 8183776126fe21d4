"""benchmarks/fashion_mnist_lt.py on tiny IDX files written here (never the Debian package)."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from .conftest import load_benchmark

fm = load_benchmark('fashion_mnist_lt')


def _write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(n).to_bytes(4, 'big') for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, 'wb') as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.RandomState(0)
    per_class_train, per_class_test = 20, 2
    train_labels = np.repeat(np.arange(10), per_class_train)
    test_labels = np.repeat(np.arange(10), per_class_test)
    folder = tmp_path / 'fm'
    folder.mkdir()
    _write_idx(folder / 'train-images-idx3-ubyte.gz', rng.randint(0, 256, (len(train_labels), 28, 28)))
    _write_idx(folder / 'train-labels-idx1-ubyte.gz', train_labels)
    _write_idx(folder / 't10k-images-idx3-ubyte', rng.randint(0, 256, (len(test_labels), 28, 28)), gz=False)
    _write_idx(folder / 't10k-labels-idx1-ubyte', test_labels, gz=False)
    return folder


def test_read_idx_round_trips(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / 'a.gz', array)
    np.testing.assert_array_equal(fm.read_idx(tmp_path / 'a.gz'), array)


def test_read_idx_refuses_a_truncated_file(tmp_path):
    array = np.zeros((4, 5), dtype=np.uint8)
    _write_idx(tmp_path / 'a', array, gz=False)
    (tmp_path / 'a').write_bytes((tmp_path / 'a').read_bytes()[:-3])
    with pytest.raises(SystemExit, match='truncated'):
        fm.read_idx(tmp_path / 'a')


def test_to_rgb32_pads_and_keeps_the_pixels():
    images = np.random.RandomState(1).randint(1, 256, (3, 28, 28)).astype(np.uint8)
    out = fm.to_rgb32(images)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 2:30, 2:30, 1], images)
    assert (out[:, :2].max(), out[:, :, 30:].max()) == (0, 0)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_main_writes_the_longtail_view_with_class_names(idx_folder, tmp_path, capsys):
    import datasets

    out = tmp_path / 'out'
    assert fm.main([str(idx_folder), str(out), '--imb-factor', '10']) == 0
    ds = datasets.load_dataset('parquet', data_files={s: str(out / 'data' / f'{s}-00000-of-00001.parquet')
                                                      for s in ('train', 'test')})
    assert ds['train'].features['label'].names == fm.CLASS_NAMES
    counts = np.bincount(ds['train']['label'], minlength=10).tolist()
    assert counts[0] == 20 and counts[-1] == 2 and counts == sorted(counts, reverse=True)
    assert len(ds['test']) == 20
    image = ds['train'][0]['img']
    assert image.size == (32, 32) and image.mode == 'RGB'
    assert 'per class [20,' in capsys.readouterr().out


def test_main_refuses_a_folder_without_the_files(tmp_path):
    with pytest.raises(SystemExit, match='dataset-fashion-mnist'):
        fm.main([str(tmp_path), str(tmp_path / 'out')])
