"""Fashion-MNIST-LT in the Hub schema: the fine-tuning benchmark's data (a new domain for the CIFAR-10 zoo).

Debian's ``dataset-fashion-mnist`` holds the four IDX files (60,000 training and 10,000 test images,
28 x 28 grey levels, 10 classes)::

    apt-get install -y dataset-fashion-mnist
    python benchmarks/fashion_mnist_lt.py /usr/share/datasets/fashion-mnist OUT [--imb-factor 100] [--data-seed 0]

OUT is a folder ``train.py --dataset`` reads like a Hub data set: ``data/{train,test}-00000-of-00001.parquet``
with ``img`` (PNG bytes) and ``label`` (ClassLabel with Fashion-MNIST's names). The training split is the
long-tailed view ``N_i = 6000 * IF^(-i/9)`` of the training images (``mislas_timm.longtail_counts`` and
``longtail_indices``, the CIFAR-10-LT construction, data seed 0), kept in that order; the test split is
all 10,000 test images. To fit the 32 x 32 x 3 input of the CIFAR ResNets without resampling, every
image is zero-padded by 2 pixels on each side (Fashion-MNIST's background is 0) and its grey level
repeated in the three channels: the pixels are exactly the originals.
"""
from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_png import write_split  # noqa: E402  (the same Hub-schema writer)

CLASS_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
               'Ankle boot']
FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
IDX_TYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as an array: magic 0x0000TTDD (T: element type, D: dimensions),
    then D big-endian uint32 sizes, then the elements."""
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in IDX_TYPES:
        raise SystemExit(f'{path} is not an unsigned-byte IDX file')
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims))
    data = np.frombuffer(raw, dtype=IDX_TYPES[raw[2]], offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise SystemExit(f'{path}: header says {shape}, the file holds {data.size} elements (truncated?)')
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + '.gz', stem):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f'{folder} has no {stem}[.gz]: install Debian\'s dataset-fashion-mnist and pass '
                     '/usr/share/datasets/fashion-mnist')


def read_fashion_mnist(folder: Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{split: (images N x 28 x 28 uint8, labels N int64)}."""
    out = {}
    for split, (images_file, labels_file) in FILES.items():
        images, labels = read_idx(_find(folder, images_file)), read_idx(_find(folder, labels_file))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SystemExit(f'{split}: images {images.shape} and labels {labels.shape} do not pair up')
        out[split] = (images, labels.astype(np.int64))
    return out


def to_rgb32(images: np.ndarray) -> np.ndarray:
    """N x 28 x 28 grey -> N x 32 x 32 x 3: 2 pixels of zero padding per side, grey repeated per channel."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[..., None], 3, axis=3)


def longtail_subset(labels: np.ndarray, imb_factor: float, data_seed: int) -> Tuple[np.ndarray, List[int]]:
    """Indices of the long-tailed training view and its per-class counts (class 0 the largest)."""
    from mislas_timm.data.longtail import longtail_counts, longtail_indices

    n_max = int(np.bincount(labels).max())
    counts = longtail_counts(n_max, int(labels.max()) + 1, imb_factor)
    return longtail_indices(labels, counts, data_seed), counts


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', type=Path, help='folder of the four IDX files (/usr/share/datasets/fashion-mnist)')
    parser.add_argument('out', type=Path, help='output folder (Hub schema)')
    parser.add_argument('--imb-factor', type=float, default=100.0, help='N_1 / N_K of the training view (default 100)')
    parser.add_argument('--data-seed', type=int, default=0, help='seed of the long-tail subset (default 0)')
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f'{args.out} is not empty: pass a new folder')
    data = read_fashion_mnist(args.source)
    images, labels = data['train']
    kept, counts = longtail_subset(labels, args.imb_factor, args.data_seed)
    splits = {'train': (images[kept], labels[kept]), 'test': data['test']}
    for split, (split_images, split_labels) in splits.items():
        write_split(to_rgb32(split_images), split_labels, args.out / 'data' / f'{split}-00000-of-00001.parquet',
                    names=CLASS_NAMES)
        print(f'{split}: {len(split_labels)} images, per class {np.bincount(split_labels, minlength=10).tolist()}')
    imb = int(args.imb_factor) if args.imb_factor.is_integer() else args.imb_factor
    (args.out / 'README.md').write_text(
        f'# Fashion-MNIST-LT (IF {imb}, data seed {args.data_seed})\n\nFashion-MNIST (Debian '
        '`dataset-fashion-mnist`) in the Hub schema, 32x32x3 (2-pixel zero padding, grey repeated per channel). '
        f'Training split: the long-tailed view, per class {counts}; test split: all 10,000 test images. Built by '
        '`benchmarks/fashion_mnist_lt.py`.\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
