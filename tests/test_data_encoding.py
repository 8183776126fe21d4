"""mislas_timm.data.encoding: the compression of a data set's images, read from their bytes."""
from __future__ import annotations

import numpy as np
import pytest
from mislas_timm.data.encoding import chroma_subsampling, describe_image_bytes, image_encoding, jpeg_quality

from .conftest import encode_image, make_image_dataset


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
