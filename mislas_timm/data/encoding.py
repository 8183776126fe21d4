"""What compression a data set's image bytes carry, read from the files themselves.

A JPEG re-export of a lossless data set is not the data set: the project's local CIFAR-10 copy is
JPEG quality 75 with 4:2:0 chroma subsampling (colour stored at 16x16 for a 32x32 image), while the
Hub's ``uoft-cs/cifar10`` holds the original pixels as PNG. Runs record the encoding they trained
on, and model cards state it, so numbers measured on one copy are never presented as the other's.

The JPEG quality is recovered from the first quantisation table: libjpeg scales its standard
luminance table ``L`` by ``S = 5000 / Q`` (Q < 50) or ``S = 200 - 2 Q`` (Q >= 50) as
``max(1, min(255, floor((L * S + 50) / 100)))``; the Q whose scaled table equals the stored one is
the quality. Chroma subsampling comes from the frame's sampling factors (luma h x v per chroma sample).

:func:`encoding_mismatch` is the one comparison of a model's recorded encoding with a data set's:
the evaluator and ``calibrate`` warn with its line (:class:`EncodingMismatchWarning`), the zoo refuses.
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Optional, Sequence, Tuple

__all__ = ['jpeg_quality', 'chroma_subsampling', 'describe_image_bytes', 'image_encoding', 'recorded_encoding',
           'encoding_mismatch', 'EncodingMismatchWarning']

# The first two rows of libjpeg's standard luminance quantisation table (ITU-T T.81 Annex K, Table
# K.1), in natural (row-major) order as Pillow reports ``quantization``; enough to tell qualities apart.
_STANDARD_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55)


def _scaled(value: int, quality: int) -> int:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return max(1, min(255, (value * scale + 50) // 100))


def jpeg_quality(luma_table: Sequence[int]) -> Optional[int]:
    """The libjpeg quality (1-100) that produces this luminance table (natural order), or None."""
    head = tuple(int(v) for v in luma_table[:len(_STANDARD_LUMA)])
    for quality in range(100, 0, -1):  # highest first: qualities near 100 can share a table
        if tuple(_scaled(v, quality) for v in _STANDARD_LUMA[:len(head)]) == head:
            return quality
    return None


def chroma_subsampling(layers: Sequence[Tuple[int, int, int, int]]) -> Optional[str]:
    """'4:4:4', '4:2:2', '4:2:0' or '4:1:1' from PIL's ``layer`` list (id, h, v, table); None if not 3-channel."""
    if len(layers) != 3:
        return None
    (_, luma_h, luma_v, _), (_, cb_h, cb_v, _), (_, cr_h, cr_v, _) = layers
    if (cb_h, cb_v) != (cr_h, cr_v) or luma_h % cb_h or luma_v % cb_v:
        return None
    ratio = (luma_h // cb_h, luma_v // cb_v)
    return {(1, 1): '4:4:4', (2, 1): '4:2:2', (2, 2): '4:2:0', (4, 1): '4:1:1'}.get(ratio)


def describe_image_bytes(data: bytes) -> str:
    """One image's encoding in words: 'PNG (lossless)', 'JPEG quality 75, 4:2:0 chroma subsampling', ..."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        fmt = image.format or 'unknown'
        if fmt == 'JPEG':
            quality = jpeg_quality(image.quantization[0]) if getattr(image, 'quantization', None) else None
            subsampling = chroma_subsampling(getattr(image, 'layer', []))
            parts = ['JPEG' + (f' quality {quality}' if quality else ' (non-standard tables)')]
            if subsampling:
                parts.append(f'{subsampling} chroma subsampling')
            return ', '.join(parts)
        if fmt in ('PNG', 'BMP', 'TIFF', 'PPM'):
            return f'{fmt} (lossless)'
        if fmt == 'WEBP':
            return 'WEBP'
        return fmt


def image_encoding(ds, column: str, rows: int = 20) -> str:
    """The encoding of a data set's image column, read from ``rows`` evenly spaced rows' bytes; the
    distinct descriptions joined with ' / ' when the rows disagree. Decoded-array columns say so."""
    import datasets

    from .hf import DECODE_ERRORS

    feature = ds.features.get(column)
    if not isinstance(feature, datasets.Image):
        return 'decoded arrays (no file encoding)'
    raw = ds.cast_column(column, datasets.Image(decode=False))
    n = len(raw)
    picks = sorted({int(i * n / rows) for i in range(min(rows, n))})
    seen = []
    for i in picks:
        cell = raw[i][column]
        data = cell.get('bytes') if isinstance(cell, dict) else None
        if data is None and isinstance(cell, dict) and cell.get('path'):
            with open(cell['path'], 'rb') as f:
                data = f.read()
        if data is None:
            continue
        try:
            described = describe_image_bytes(data)
        except DECODE_ERRORS:  # an undecodable file is reported by the data checks, with its row
            continue
        if described not in seen:
            seen.append(described)
    return ' / '.join(seen) if seen else 'unknown'



class EncodingMismatchWarning(UserWarning):
    """A model measured on images stored unlike the ones it trained on (the message names both)."""


# What image_encoding says when a column's bytes tell nothing about the pixels' history.
_UNKNOWN = ('unknown', 'decoded arrays (no file encoding)')


def recorded_encoding(model: Any) -> Optional[str]:
    """The encoding a model's training images had, as its run recorded it (``mislas.image_encoding`` of
    config.json, on the model as ``mislas_config``); ``model`` may also be that ``mislas`` mapping."""
    record = model if isinstance(model, Mapping) else (getattr(model, 'mislas_config', None) or {})
    value = record.get('image_encoding')
    return str(value) if value else None


def _pixel_exact(encoding: str) -> bool:
    return all('(lossless)' in part for part in encoding.split(' / '))


def encoding_mismatch(model: Any, found: Optional[str], model_name: Any, data_name: Any) -> Optional[str]:
    """One line when ``model`` (a model, or its ``mislas`` record) trained on images stored unlike
    ``found`` (the :func:`image_encoding` of the data it is about to be measured on), else None.

    ``model_name`` / ``data_name`` name both in the line. Two lossless encodings (PNG, BMP, ...) hold
    the same pixels and agree; nothing is said when the model recorded no encoding or the data's bytes
    cannot tell (decoded arrays). A model measured on a lossy copy of its data set loses points to the
    compression (the CIFAR-10 zoo on the JPEG copy, see BENCHMARKS.md), so such numbers are not its own."""
    trained_on = recorded_encoding(model)
    if not trained_on or not found or trained_on == found or found in _UNKNOWN or trained_on in _UNKNOWN:
        return None
    if _pixel_exact(trained_on) and _pixel_exact(found):
        return None
    return f'{model_name} was trained on images stored as {trained_on} but {data_name} holds {found}'
