"""Corrupt data: a damaged data file or an undecodable image gives one line naming the file / row and the fix."""
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import timm
import torch
from torch.utils.data import DataLoader

from mislas_timm.data.batch_augment import DecodedImages
from mislas_timm.data.hf import DataError, ImageClassificationView, load_split
from mislas_timm.hub import save_hub_folder

from .conftest import TINY_CLASSES, make_image_dataset

ROOT = Path(__file__).resolve().parents[1]
BASE_ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
TRAIN_FILE, TEST_FILE = 'data/train-00000-of-00001.parquet', 'data/test-00000-of-00001.parquet'
BAD_ROW = 5  # a class-0 row: the long-tail view of the tiny config keeps all of class 0
NOT_AN_IMAGE = b'this is not an image'


def with_bad_image(ds, row):
    """``ds`` with the image bytes of ``row`` replaced by bytes that are no image."""
    raw = list(ds.cast_column('img', datasets.Image(decode=False))['img'])
    raw[row] = {'bytes': NOT_AN_IMAGE, 'path': None}
    return datasets.Dataset.from_dict({'img': raw, 'label': list(ds['label'])}, features=ds.features)


@pytest.fixture(scope='module')
def splits():
    return make_image_dataset([60] * 4, seed=0), make_image_dataset([10] * 4, seed=1)


def parquet_folder(folder: Path, train, test) -> Path:
    (folder / 'data').mkdir(parents=True)
    train.to_parquet(str(folder / TRAIN_FILE))
    test.to_parquet(str(folder / TEST_FILE))
    return folder


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A private datasets cache, so that a damaged file is really read (not a prepared copy)."""
    cache = tmp_path / 'hf-datasets-cache'
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', cache)
    return cache


def run(module_or_script, *args, cache: Path, timeout=600):
    """``python -m MODULE`` or ``python SCRIPT.py`` with a private datasets cache."""
    env = dict(BASE_ENV, HF_DATASETS_CACHE=str(cache))
    if module_or_script.endswith('.py'):
        head = [sys.executable, str(ROOT / module_or_script)]
    else:
        head = [sys.executable, '-m', module_or_script]
    return subprocess.run(head + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


def last_line_error(result, *needles):
    """Exit 2, no traceback, and stderr ends with one line holding every needle (progress bars may precede it)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().split('\n')[-1]
    for needle in needles:
        assert needle in line, result.stderr[-3000:]
    return line


def nothing_written(out: Path) -> None:
    assert not (out / 'stage1').exists() and not (out / 'stage2').exists()
    assert not (out / 'checkpoints' / 'stage1').exists() and not (out / 'checkpoints' / 'stage2').exists()


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model('resnet20_cifar', num_classes=4).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 16, 16), label_names=TINY_CLASSES)
    return save_hub_folder(model, tmp_path_factory.mktemp('corrupt-model') / 'model', label_names=TINY_CLASSES,
                           mislas={'class_counts': [60, 27, 12, 6], 'rank_split': [1, 3]})


# ---------------------------------------------------------------- damaged data files


@pytest.mark.parametrize('damage, problem', [
    ('truncate', 'truncated or corrupt'),
    ('text', 'not a parquet file'),
    ('lfs', 'Git LFS pointer'),
    ('empty', 'empty'),
])
def test_load_split_names_a_damaged_parquet_file(splits, tmp_path, fresh_cache, damage, problem):
    folder = parquet_folder(tmp_path / 'pq', *splits)
    assert len(load_split(str(folder), 'test')) == 40  # prepared once in the cache: then the file is damaged
    bad = folder / TEST_FILE
    if damage == 'truncate':
        truncate(bad)
    elif damage == 'text':
        bad.write_text('<html><body>Rate limit exceeded</body></html>')
    elif damage == 'lfs':
        bad.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 15213\n')
    else:
        bad.write_bytes(b'')
    for split in ('test', 'train'):  # datasets prepares every split: a bad test file blocks the train split too
        with pytest.raises(DataError) as info:
            load_split(str(folder), split)
        message = str(info.value)
        assert '\n' not in message and str(bad) in message and problem in message, message
        assert 'download it again or remove it' in message


def test_load_split_names_a_file_damaged_inside(splits, tmp_path, fresh_cache):
    """The footer is intact, a page inside is not: found by reading each row group after the load fails."""
    import pyarrow.parquet as pq

    folder = parquet_folder(tmp_path / 'pq', *splits)
    bad = folder / TEST_FILE
    column = pq.read_metadata(bad).row_group(0).column(1)  # the label column's pages
    data = bytearray(bad.read_bytes())
    start = column.dictionary_page_offset or column.data_page_offset
    data[start:start + column.total_compressed_size] = b'\xff' * column.total_compressed_size
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_split(str(folder), 'test')
    message = str(info.value)
    assert '\n' not in message and str(bad) in message and 'corrupt' in message, message


def test_load_split_names_a_truncated_arrow_file(splits, tmp_path):
    folder = tmp_path / 'saved'
    datasets.DatasetDict({'train': splits[0], 'test': splits[1]}).save_to_disk(str(folder))
    bad = next((folder / 'test').glob('*.arrow'))
    truncate(bad)
    with pytest.raises(DataError) as info:
        load_split(str(folder), 'test')
    message = str(info.value)
    assert '\n' not in message and str(bad) in message and 'truncated or corrupt' in message, message


def test_evaluator_names_a_damaged_file(splits, tiny_model, tmp_path):
    folder = parquet_folder(tmp_path / 'pq', *splits)
    truncate(folder / TEST_FILE)
    out = tmp_path / 'eval'
    result = run('mislas_timm.evaluate', tiny_model, '--dataset', folder, '--out', out, cache=tmp_path / 'cache')
    assert result.stderr.count('\n') <= 1, result.stderr  # nothing before the line: the check precedes datasets
    last_line_error(result, str(folder / TEST_FILE), 'truncated or corrupt', 'download it again')
    assert not out.exists()


def test_train_names_a_damaged_file(splits, tiny_config_file, tmp_path):
    folder = parquet_folder(tmp_path / 'pq', *splits)
    (folder / TRAIN_FILE).write_bytes(b'PAR1 not really')
    out = tmp_path / 'run'
    result = run('train.py', '--config', tiny_config_file, '--dataset', folder, '--output-dir', out,
                 cache=tmp_path / 'cache')
    assert result.stderr.count('\n') <= 1, result.stderr
    last_line_error(result, 'train.py: error:', str(folder / TRAIN_FILE), 'truncated or corrupt')
    nothing_written(out)


# ---------------------------------------------------------------- undecodable images


def test_view_names_the_undecodable_row(splits):
    ds = with_bad_image(splits[1], 17)
    view = ImageClassificationView(ds, 'img', 'label', lambda image: torch.zeros(1))
    assert view[16][1] == 1
    with pytest.raises(DataError) as info:
        view[17]
    message = str(info.value)
    assert message.startswith("row 17 of column 'img' is not a decodable image (UnidentifiedImageError"), message
    assert message.endswith('remove or fix it') and '\n' not in message
    # a selected view names the row of the split, not of the view
    picked = ImageClassificationView(ds.select([3, 17, 30]), 'img', 'label', lambda image: torch.zeros(1))
    with pytest.raises(DataError, match="^row 17 of column 'img'"):
        picked[1]
    # through DataLoader worker processes the error stays one line (torch re-raises it with the worker traceback)
    loader = DataLoader(view, batch_size=8, num_workers=1)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value) == message


def test_decode_once_names_the_undecodable_row(splits):
    ds = with_bad_image(splits[1], 17)
    with pytest.raises(DataError) as info:
        DecodedImages(ds, 'img', 'label', size=(16, 16))
    assert str(info.value).startswith("row 17 of column 'img' is not a decodable image"), str(info.value)
    with pytest.raises(DataError, match="^row 0 of column 'img' is not a decodable image"):
        DecodedImages(with_bad_image(splits[1], 0), 'img', 'label')
    with pytest.raises(DataError, match="^row 17 of column 'img'"):
        DecodedImages(ds.select([1, 4, 9, 17, 20]), 'img', 'label', size=(16, 16))


def test_evaluator_names_the_undecodable_row(splits, tiny_model, tmp_path):
    folder = parquet_folder(tmp_path / 'pq', splits[0], with_bad_image(splits[1], 17))
    out = tmp_path / 'eval'
    result = run('mislas_timm.evaluate', tiny_model, '--dataset', folder, '--out', out, cache=tmp_path / 'cache')
    last_line_error(result, "row 17 of column 'img' (split test) is not a decodable image", 'remove or fix it')
    assert not out.exists()


@pytest.mark.parametrize('decode_once', ['auto', 'false'])
def test_train_names_the_undecodable_row(splits, tiny_config_file, tmp_path, decode_once):
    folder = parquet_folder(tmp_path / 'pq', with_bad_image(splits[0], BAD_ROW), splits[1])
    out = tmp_path / 'run'
    result = run('train.py', '--config', tiny_config_file, '--dataset', folder, '--output-dir', out,
                 '--set', f'data.decode_once={decode_once}', cache=tmp_path / 'cache')
    last_line_error(result, 'train.py: error:', f"row {BAD_ROW} of column 'img' (split train) is not a decodable image")
    nothing_written(out)
