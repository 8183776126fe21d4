"""mislas_timm.data.encoding: the compression of a data set's images, read from their bytes; the evaluator's
warning when a model is measured on a copy stored otherwise; no huggingface_hub card-metadata lines."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mislas_timm.data.encoding import chroma_subsampling, describe_image_bytes, image_encoding, jpeg_quality

from .conftest import ROOT, TINY_CLASSES, encode_image, make_image_dataset


def _encode(fmt: str, **kwargs) -> bytes:
    return encode_image(np.random.RandomState(0).randint(0, 256, (32, 32, 3), dtype=np.uint8), fmt, **kwargs)


@pytest.mark.parametrize('quality', [5, 30, 50, 75, 90, 95])
@pytest.mark.parametrize('subsampling,name', [(0, '4:4:4'), (1, '4:2:2'), (2, '4:2:0')])
def test_jpeg_quality_and_subsampling_are_read_back(quality, subsampling, name):
    data = _encode('JPEG', quality=quality, subsampling=subsampling)
    assert describe_image_bytes(data) == f'JPEG quality {quality}, {name} chroma subsampling'


def test_quality_from_the_table_formula():
    # libjpeg at quality 75 scales by 50%: the first row 16 11 10 16 ... becomes 8 6 5 8 ...
    assert jpeg_quality([8, 6, 5, 8, 12, 20, 26, 31]) == 75
    assert jpeg_quality([16, 11, 10, 16, 24, 40, 51, 61]) == 50
    assert jpeg_quality([3, 1, 4, 1, 5, 9, 2, 6]) is None  # not a scaled standard table
    assert chroma_subsampling([(1, 2, 2, 0), (2, 1, 1, 1), (3, 1, 1, 1)]) == '4:2:0'
    assert chroma_subsampling([(1, 1, 1, 0)]) is None  # greyscale


def test_lossless_formats_say_so():
    assert describe_image_bytes(_encode('PNG')) == 'PNG (lossless)'
    assert describe_image_bytes(_encode('BMP')) == 'BMP (lossless)'


def test_image_encoding_of_a_dataset_column():
    import datasets

    ds = make_image_dataset([3, 3], size=8)  # PIL images: datasets stores them as PNG
    assert image_encoding(ds, 'img') == 'PNG (lossless)'
    jpeg = datasets.Dataset.from_dict({'img': [{'bytes': _encode('JPEG', quality=75, subsampling=2), 'path': None}] * 2},
                                      features=datasets.Features({'img': datasets.Image()}))
    assert image_encoding(jpeg, 'img') == 'JPEG quality 75, 4:2:0 chroma subsampling'
    mixed = datasets.concatenate_datasets([ds.remove_columns('label'), jpeg])
    assert image_encoding(mixed, 'img', rows=8) == 'PNG (lossless) / JPEG quality 75, 4:2:0 chroma subsampling'


# ---------------------------------------------------------------- a model measured on a copy stored otherwise

def test_encoding_mismatch_names_both_encodings():
    from mislas_timm.data.encoding import encoding_mismatch

    png, jpeg = 'PNG (lossless)', 'JPEG quality 75, 4:2:0 chroma subsampling'
    line = encoding_mismatch({'image_encoding': png}, jpeg, 'model m', 'copy D')
    assert line == f'model m was trained on images stored as {png} but copy D holds {jpeg}'
    assert encoding_mismatch({'image_encoding': jpeg}, png, 'm', 'D').endswith(f'holds {png}')  # and the reverse
    assert encoding_mismatch({'image_encoding': png}, png, 'm', 'D') is None
    assert encoding_mismatch({'image_encoding': png}, 'BMP (lossless)', 'm', 'D') is None  # the same pixels
    assert encoding_mismatch({}, jpeg, 'm', 'D') is None  # nothing recorded: nothing to compare
    assert encoding_mismatch({'image_encoding': png}, 'decoded arrays (no file encoding)', 'm', 'D') is None


CARD_LINE = 'Repo card metadata block was not found'
PNG_RECORD = 'PNG (lossless)'


def _parquet_folder(folder, images, labels, fmt: str, **save_kwargs):
    """A Hub-schema parquet folder (data/test-*.parquet) whose README.md has no YAML block, as
    benchmarks/cifar10_png.py writes it."""
    import datasets

    cells = [{'bytes': encode_image(image, fmt, **save_kwargs), 'path': None} for image in images]
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=TINY_CLASSES)})
    (folder / 'data').mkdir(parents=True)
    datasets.Dataset.from_dict({'img': cells, 'label': labels}, features=features).to_parquet(
        str(folder / 'data' / 'test-00000-of-00001.parquet'))
    (folder / 'README.md').write_text('# tiny colours\n\nNo YAML block here.\n')
    return folder


@pytest.fixture(scope='module')
def copies(tmp_path_factory):
    """The same 12 test images as PNG and as JPEG quality 75 (4:2:0) parquet folders."""
    test = make_image_dataset([3] * 4, size=16, seed=1)
    root = tmp_path_factory.mktemp('copies')
    images, labels = list(test['img']), list(test['label'])
    return {'png': _parquet_folder(root / 'png', images, labels, 'PNG'),
            'jpeg': _parquet_folder(root / 'jpeg', images, labels, 'JPEG', quality=75, subsampling=2)}


@pytest.fixture(scope='module')
def png_trained_model(tmp_path_factory):
    """A tiny model folder whose config.json records training on original (PNG) pixels."""
    import timm

    import mislas_timm  # noqa: F401  (registers resnet20_cifar)
    from mislas_timm.hub import save_hub_folder

    torch.manual_seed(0)
    model = timm.create_model('resnet20_cifar', num_classes=4).eval()
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 16, 16), label_names=TINY_CLASSES)
    return save_hub_folder(model, tmp_path_factory.mktemp('model') / 'png-trained', label_names=TINY_CLASSES,
                           mislas={'class_counts': [30, 20, 10, 5], 'image_encoding': PNG_RECORD})


def test_evaluate_warns_on_a_copy_stored_otherwise(png_trained_model, copies):
    import warnings

    from mislas_timm import load_model
    from mislas_timm.data.encoding import EncodingMismatchWarning
    from mislas_timm.evaluation import evaluate

    model = load_model(str(png_trained_model))
    with pytest.warns(EncodingMismatchWarning) as caught:
        report = evaluate(model, str(copies['jpeg']))
    assert report['num_samples'] == 12  # a warning, not a refusal
    text = str(caught[0].message)
    assert len(caught) == 1 and '\n' not in text
    assert f'trained on images stored as {PNG_RECORD} but {copies["jpeg"]} (test split) holds JPEG quality 75, ' \
           '4:2:0 chroma subsampling' in text
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter('always')
        evaluate(model, str(copies['png']))
    assert not [w for w in quiet if issubclass(w.category, EncodingMismatchWarning)]


def _run(code_or_module, *args, cache):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1',
               HF_DATASETS_CACHE=str(cache), HF_DATASETS_DISABLE_PROGRESS_BARS='1')
    command = ['-c', code_or_module] if '\n' in code_or_module or ' ' in code_or_module else ['-m', code_or_module]
    return subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_evaluator_cli_warns_in_one_line_without_card_metadata_lines(png_trained_model, copies, tmp_path):
    # The folder does make huggingface_hub log the card line when datasets loads it ...
    plain = _run(f'import datasets\ndatasets.load_dataset({str(copies["jpeg"])!r}, split="test")',
                 cache=tmp_path / 'cache-plain')
    assert plain.returncode == 0 and CARD_LINE in plain.stderr, plain.stderr[-2000:]
    # ... and the evaluator says only what matters: one line naming both encodings, exit 0.
    out = tmp_path / 'out'
    result = _run('mislas_timm.evaluate', png_trained_model, '--dataset', copies['jpeg'], '--out', out,
                  cache=tmp_path / 'cache')
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('evaluate: warning: model resnet20_cifar')
    assert f'stored as {PNG_RECORD} but {copies["jpeg"]} (test split) holds JPEG quality 75' in lines[0]
    assert (out / 'metrics.json').is_file()
    # the original pixels: no warning, no card line
    same = _run('mislas_timm.evaluate', png_trained_model, '--dataset', copies['png'], cache=tmp_path / 'cache')
    assert same.returncode == 0 and not same.stderr.strip(), same.stderr


def test_card_metadata_filter_drops_exactly_that_message(caplog):
    import logging

    from mislas_timm.data.logs import CARD_METADATA_LOGGER, silence_card_metadata_warning

    silence_card_metadata_warning()
    silence_card_metadata_warning()  # idempotent: one filter
    logger = logging.getLogger(CARD_METADATA_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=CARD_METADATA_LOGGER):
        logger.warning('Repo card metadata block was not found. Setting CardData to empty.')
        logger.warning('Something else about a card.')
    shown = [r.getMessage() for r in caplog.records if r.name == CARD_METADATA_LOGGER]
    assert shown == ['Something else about a card.']
