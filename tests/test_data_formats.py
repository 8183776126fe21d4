"""Data as people have it: pandas / pyarrow parquet (no Hugging Face metadata), image folders, string labels,
a held-out test split for data without one, a validation split per class, and one-line errors."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mislas_timm.config import ConfigError, load_preset, parse_config, set_value
from mislas_timm.data.hf import DataError, ImageClassificationView, SplitNotFound, labels_of, load_split
from mislas_timm.data.longtail import longtail_view, split_sha256, stratified_holdout, validation_split
from mislas_timm.training import load_data

from .conftest import encode_image, make_image_dataset

ROOT = Path(__file__).resolve().parents[1]
# Each class is one flat colour whose brightest channel is its index among the SORTED names, so a decoded
# image tells which class index its row must carry. The names are written unsorted on purpose.
COLOURS = {'ant': (220, 30, 30), 'moth': (30, 220, 30), 'zebra': (30, 30, 220)}
WRITE_ORDER = ['zebra', 'ant', 'moth']


def png(name: str, shade: int = 0) -> bytes:
    colour = np.array(COLOURS[name]) + shade
    return encode_image(np.full((8, 8, 3), np.clip(colour, 0, 255), dtype=np.uint8), 'PNG')


def rows_of(counts):
    """(class name, png bytes) rows, classes interleaved in an unsorted order."""
    rows = []
    for i in range(max(counts.values())):
        rows.extend((name, png(name, i)) for name in WRITE_ORDER if i < counts.get(name, 0))
    return rows


def colour_class(image) -> int:
    return int(np.asarray(image.convert('RGB'), dtype=np.float64).mean(axis=(0, 1)).argmax())


def assert_labels_match_images(ds, image_column='image', label_column='label'):
    assert [colour_class(im) for im in ds[image_column]] == labels_of(ds, label_column)


def write_pandas(path: Path, rows) -> None:
    """The way a pandas user writes it: image as a {bytes, path} dict, label as a string."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({'image': [{'bytes': data, 'path': f'{i}.png'} for i, (_, data) in enumerate(rows)],
                          'label': [name for name, _ in rows]})
    frame.to_parquet(path)


def write_pyarrow(path: Path, rows) -> None:
    """The way a pyarrow user writes it: image as plain binary, label as an int (the sorted-name index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(COLOURS)
    pq.write_table(pa.table({'image': pa.array([data for _, data in rows], pa.binary()),
                             'label': pa.array([names.index(name) for name, _ in rows], pa.int64())}), path)


def write_folder(root: Path, counts) -> None:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f'{i}.png').write_bytes(png(name, i))


def config(source, longtail: bool = False, **dataset):
    """The CPU preset pointed at ``source``: the data as it is (no long-tail view) unless asked."""
    raw = load_preset('cifar10-lt-if100-cpu')
    if not longtail:
        raw.pop('longtail')
    for key, value in {'source': str(source), 'num_classes': None, **dataset}.items():
        set_value(raw, f'dataset.{key}', value)
    set_value(raw, 'groups.rank_split', None)
    return parse_config(raw)


def one_line(err) -> str:
    message = str(err.value)
    assert '\n' not in message and 'functools' not in message, message
    return message


# ---------------------------------------------------------------- formats


def test_pandas_parquet_with_string_labels(tmp_path):
    import pyarrow.parquet as pq

    folder = tmp_path / 'pandas'
    write_pandas(folder / 'data' / 'train-00000-of-00001.parquet', rows_of({'zebra': 6, 'ant': 4, 'moth': 5}))
    write_pandas(folder / 'data' / 'test-00000-of-00001.parquet', rows_of({'zebra': 2, 'ant': 2, 'moth': 1}))
    assert b'huggingface' not in (pq.read_schema(folder / 'data' / 'train-00000-of-00001.parquet').metadata or {})
    data = load_data(config(folder))
    assert data.label_names == ['ant', 'moth', 'zebra'] and data.num_classes == 3
    assert data.class_counts == [4, 5, 6] and data.train_labels == labels_of(data.train, 'label')
    assert_labels_match_images(data.train)
    assert_labels_match_images(data.test)
    assert len(data.test) == 5 and 'test_sha256' not in data.meta and data.val is None
    image, label = ImageClassificationView(data.test, 'image', 'label', transform=np.asarray)[0]
    assert image.shape == (8, 8, 3) and label == colour_class(data.test[0]['image'])
    # the evaluator's reader gets one line, not "invalid literal for int()"
    with pytest.raises(DataError) as err:
        labels_of(load_split(str(folder), 'test'), 'label')
    assert 'class names' in one_line(err)


def test_string_label_only_the_test_split_has(tmp_path):
    folder = tmp_path / 'pandas-unknown'
    write_pandas(folder / 'data' / 'train-00000-of-00001.parquet', rows_of({'zebra': 2, 'ant': 2}))
    write_pandas(folder / 'data' / 'test-00000-of-00001.parquet', rows_of({'zebra': 1, 'moth': 1}))
    with pytest.raises(DataError) as err:
        load_data(config(folder))
    message = one_line(err)
    assert "the test split of" in message and "label 'moth'" in message and "'ant', 'zebra'" in message, message


def test_pyarrow_parquet_with_int_labels_and_binary_images(tmp_path):
    import datasets

    folder = tmp_path / 'pyarrow'
    write_pyarrow(folder / 'train.parquet', rows_of({'zebra': 3, 'ant': 5, 'moth': 4}))
    write_pyarrow(folder / 'test.parquet', rows_of({'zebra': 2, 'ant': 1, 'moth': 1}))
    ds = load_split(str(folder), 'train')
    assert isinstance(ds.features['image'], datasets.Image)
    data = load_data(config(folder))
    assert data.label_names == ['0', '1', '2'] and data.class_counts == [5, 4, 3] and len(data.test) == 4
    assert_labels_match_images(data.train)
    assert_labels_match_images(data.test)


@pytest.mark.parametrize('with_test', [True, False])
def test_image_folder(tmp_path, with_test):
    root = tmp_path / 'flowers'
    write_folder(root / 'train', {'zebra': 5, 'ant': 4, 'moth': 6})
    if with_test:
        write_folder(root / 'test', {'zebra': 2, 'ant': 1})  # a class may be missing from the test split
    data = load_data(config(root))
    assert data.label_names == ['ant', 'moth', 'zebra']
    assert_labels_match_images(data.train)
    assert_labels_match_images(data.test)
    if with_test:
        assert data.class_counts == [4, 6, 5] and len(data.test) == 3 and 'test_sha256' not in data.meta
    else:  # 20% of each class held out: round(0.8), round(1.2), round(1.0)
        assert data.meta['test_counts'] == [1, 1, 1] and data.class_counts == [3, 5, 4]


def test_image_folder_split_names_as_datasets_reads_them(tmp_path):
    """Training/ and testing/ are the train and test splits (any case), asked for as train / test or by folder."""
    root = tmp_path / 'bugs'
    write_folder(root / 'Training', {'zebra': 5, 'ant': 4, 'moth': 6})
    write_folder(root / 'testing', {'zebra': 2, 'ant': 1})
    data = load_data(config(root))
    assert data.label_names == ['ant', 'moth', 'zebra'] and data.class_counts == [4, 6, 5] and len(data.test) == 3
    assert 'test_sha256' not in data.meta  # the testing/ folder, not a hold-out
    assert_labels_match_images(data.test)
    assert len(load_split(str(root), 'testing')) == 3
    with pytest.raises(SplitNotFound) as err:
        load_split(str(root), 'validation')
    assert "has ['test', 'train']" in one_line(err)
    write_folder(root / 'train', {'zebra': 1, 'ant': 1})
    with pytest.raises(DataError) as err:
        load_split(str(root), 'train')
    message = one_line(err)
    assert 'two folders for its train split' in message and 'Training/' in message and 'train/' in message


def test_held_out_test_split(tmp_path, caplog):
    """No test split: a stratified hold-out of the training split, never trained on, recorded by checksum."""
    root = tmp_path / 'only-train'
    write_folder(root, {'zebra': 10, 'ant': 5, 'moth': 2})  # class folders at the top: a training split only
    with caplog.at_level(logging.INFO, logger='mislas_timm.train'):
        data = load_data(config(root))
    full = load_split(str(root), 'train')
    labels = labels_of(full, 'label')
    _, held = stratified_holdout(labels, 3, 0.2)
    assert data.meta['test_sha256'] == split_sha256(held)
    assert data.meta['test_counts'] == [1, 1, 2] and data.class_counts == [4, 1, 8]
    assert data.meta['test_source'].startswith('held out of the training split')
    test_files = {Path(r['path']).name + r['path'].split('/')[-2] for r in _raw(data.test)}
    train_files = {Path(r['path']).name + r['path'].split('/')[-2] for r in _raw(data.train)}
    assert len(test_files) == 4 and not test_files & train_files and len(test_files | train_files) == 17
    line = [r.getMessage() for r in caplog.records if 'has no' in r.getMessage()]
    assert len(line) == 1 and "no 'test' split" in line[0] and data.meta['test_sha256'] in line[0]
    assert load_data(config(root)).meta['test_sha256'] == data.meta['test_sha256']  # same data, same split
    with pytest.raises(DataError) as err:  # switched off: a missing test split is an error again
        load_data(config(root, test_fraction=None))
    assert "split 'test'" in one_line(err) and 'dataset.test_fraction' in str(err.value)


def _raw(ds):
    import datasets

    return ds.cast_column('image', datasets.Image(decode=False))['image']


def test_single_saved_dataset_is_not_its_own_test_split(tmp_path):
    folder = tmp_path / 'single'
    make_image_dataset([6, 6, 6, 6], size=8).save_to_disk(str(folder))
    data = load_data(config(folder))
    assert data.meta['test_counts'] == [1, 1, 1, 1] and sum(data.class_counts) == 20


def test_stratified_holdout_counts_and_checksum():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    keep, held = stratified_holdout(labels, 4, 0.2)
    # round(0.2 n) per class, at least one, never a class's last image
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 1, 1, 0]
    assert sorted(keep.tolist() + held.tolist()) == list(range(18))
    # the checksum a run records: the same draw in every version (a change would move every test split)
    assert split_sha256(held) == 'edad6c3f32f9fb1fcef3205c862147be377221ec931a1815a1c3feb2352b6f34'
    assert split_sha256(stratified_holdout(labels, 4, 0.2, seed=1)[1]) != split_sha256(held)
    assert np.bincount(labels[stratified_holdout(labels, 4, 0.5)[1]], minlength=4).tolist() == [5, 3, 1, 0]
    with pytest.raises(ValueError, match='fraction'):
        stratified_holdout(labels, 4, 1.0)


# ---------------------------------------------------------------- validation split


def test_val_per_class_is_capped(tmp_path, caplog):
    root = tmp_path / 'val'
    write_folder(root / 'train', {'ant': 6, 'moth': 3, 'zebra': 1})
    write_folder(root / 'test', {'ant': 1, 'moth': 1, 'zebra': 1})
    with caplog.at_level(logging.INFO, logger='mislas_timm.train'):
        data = load_data(config(root, val_per_class=4))
    assert data.meta['val_counts'] == [4, 2, 0] and data.class_counts == [2, 1, 1]  # every class keeps one
    assert data.meta['val_per_class'] == 4 and data.meta['val_source'] == 'held out of the training split'
    assert len(data.val) == 6 and not {r['path'] for r in _raw(data.val)} & {r['path'] for r in _raw(data.train)}
    assert_labels_match_images(data.val)
    labels = labels_of(load_split(str(root), 'train'), 'label')
    _, val = longtail_view(labels, 3, None, val_per_class=4)  # what the calibrate CLI rebuilds
    assert data.meta['val_sha256'] == split_sha256(val)
    assert any('keep one for training' in r.getMessage() for r in caplog.records)


def test_val_per_class_draws_as_the_calibrate_rebuild_and_longtail_path_unchanged():
    labels = np.repeat(np.arange(3), [8, 6, 2])
    everything = np.arange(len(labels))
    # no class short: capping changes nothing, the draw is validation_split's
    assert np.array_equal(validation_split(labels, everything, 1, cap=True)[1], validation_split(labels, everything, 1)[1])
    # the long-tail path (cap off) still refuses to empty a class
    with pytest.raises(ValueError, match='lower val_per_class'):
        validation_split(labels, everything, 2)
    train, val = validation_split(labels, everything, 2, cap=True)
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 2, 1]
    assert np.bincount(labels[train], minlength=3).tolist() == [6, 4, 1]


def test_val_per_class_with_held_out_test_split(tmp_path):
    root = tmp_path / 'val-and-test'
    write_folder(root, {'ant': 10, 'moth': 10})
    data = load_data(config(root, val_per_class=3))
    assert data.meta['test_counts'] == [2, 2] and data.meta['val_counts'] == [3, 3] and data.class_counts == [5, 5]
    paths = [{r['path'] for r in _raw(ds)} for ds in (data.train, data.val, data.test)]
    assert sum(map(len, paths)) == len(set.union(*paths)) == 20


def test_config_keys():
    cfg = parse_config(load_preset('cifar10-lt-if100'))
    assert cfg.dataset.val_per_class is None and cfg.dataset.test_fraction == 0.2  # the paper presets: off
    raw = load_preset('cifar10-lt-if100')
    set_value(raw, 'dataset.test_fraction', 1.5)
    with pytest.raises(ConfigError, match='dataset.test_fraction'):
        parse_config(raw)
    raw = load_preset('cifar10-lt-if100')
    set_value(raw, 'dataset.val_per_class', 0)
    with pytest.raises(ConfigError, match='dataset.val_per_class'):
        parse_config(raw)


def test_val_per_class_with_a_longtail_view_names_the_right_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_data(config(tmp_path / 'unused', longtail=True, val_per_class=5))
    assert 'longtail.val_per_class=5' in one_line(err)


# ---------------------------------------------------------------- one-line errors


def test_empty_folder(tmp_path):
    folder = tmp_path / 'nothing'
    folder.mkdir()
    with pytest.raises(DataError) as err:
        load_split(str(folder), 'train')
    message = one_line(err)
    assert f'{folder} is empty' in message and 'parquet' in message and 'train/<class>/*.png' in message, message
    assert 'download' not in message
    (folder / 'README.md').write_text('my data\n')
    with pytest.raises(DataError) as err:
        load_split(str(folder), 'train')
    assert 'has no data files (only README.md)' in one_line(err)


def test_class_without_training_images_names_the_folder(tmp_path):
    root = tmp_path / 'birds'
    write_folder(root / 'train', {'ant': 3, 'moth': 2})
    (root / 'train' / 'zebra').mkdir()
    with pytest.raises(DataError) as err:
        load_data(config(root))
    message = one_line(err)
    assert str(root / 'train' / 'zebra') in message and "class 'zebra'" in message and 'n_max' not in message


def test_class_only_the_test_folder_has(tmp_path):
    root = tmp_path / 'insects'
    write_folder(root / 'train', {'ant': 3, 'moth': 2})
    write_folder(root / 'test', {'ant': 1, 'zebra': 1})
    with pytest.raises(DataError) as err:
        load_split(str(root), 'test')
    message = one_line(err)
    assert str(root / 'test' / 'zebra') in message and 'ant, moth' in message, message


def test_images_outside_class_folders(tmp_path):
    (tmp_path / 'loose' / 'train').mkdir(parents=True)
    (tmp_path / 'loose' / 'train' / 'a.png').write_bytes(png('ant'))
    with pytest.raises(DataError) as err:
        load_split(str(tmp_path / 'loose'), 'train')
    assert 'not in class folders' in one_line(err)


def test_class_label_without_images_names_the_class(tmp_path):
    """A long-tail preset on data with a class that has no image: the class by name, not "lower n_max"."""
    import datasets

    folder = tmp_path / 'gap'
    datasets.DatasetDict({'train': make_image_dataset([12, 6, 0, 3], size=8),
                          'test': make_image_dataset([1, 1, 1, 1], size=8)}).save_to_disk(str(folder))
    with pytest.raises(DataError) as err:
        load_data(config(folder, longtail=True))
    message = one_line(err)
    assert "class 'blue' (label 2)" in message and 'n_max' not in message, message


# ---------------------------------------------------------------- command line


def run_train(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1',
               HF_DATASETS_CACHE=str(cwd / 'hf-cache'))
    return subprocess.run([sys.executable, str(ROOT / 'train.py'), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_train_on_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / 'empty').mkdir()
    result = run_train('--preset', 'cifar10-lt-if100-cpu', '--dataset', tmp_path / 'empty', '--output-dir',
                       tmp_path / 'run', cwd=tmp_path)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith('train.py: error: data set folder') and 'is empty' in line, result.stderr[-3000:]
    assert not (tmp_path / 'run' / 'stage1').exists()


@pytest.mark.slow
def test_train_records_class_names_and_held_out_splits(tmp_path):
    """pandas parquet, string labels, no test split: the run's config.json has the names and the checksums."""
    folder = tmp_path / 'pandas-one-file'
    write_pandas(folder / 'all.parquet', rows_of({'zebra': 6, 'ant': 6, 'moth': 6}))
    cfg = tmp_path / 'tiny.yaml'
    cfg.write_text(f"""
base: _cifar_lt
longtail: null
dataset: {{source: {folder}, num_classes: null, val_per_class: 1}}
model: {{arch: resnet20_cifar}}
data: {{input_size: [3, 8, 8], eval_batch_size: 64}}
groups: {{rank_split: null}}
runtime: {{mixed_precision: 'no'}}
stage1: {{epochs: 1, batch_size: 4, warmup_epochs: 0, schedule: cosine, milestones: []}}
""")
    result = run_train('--config', cfg, '--output-dir', tmp_path / 'run', '--stage', '1', cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / 'run' / 'stage1' / 'config.json').read_text())
    assert written['label_names'] == ['ant', 'moth', 'zebra'] and written['num_classes'] == 3
    mislas = written['mislas']
    assert mislas['test_counts'] == [1, 1, 1] and mislas['val_counts'] == [1, 1, 1] and mislas['class_counts'] == [4, 4, 4]
    assert len(mislas['test_sha256']) == 64 and len(mislas['val_sha256']) == 64
    assert 'held out' in (tmp_path / 'run' / 'train.log').read_text()
