"""Decode-once data and whole-batch augmentation for small images (the CPU fast path).

Per-image PIL work (decode, pad, crop, flip, to-tensor) costs about 0.4 ms per CIFAR image on this
project's CPU, a large share of a ResNet-32 step on 2 cores. With ``data.decode_once: true`` the
training view decodes every image once into a uint8 tensor and the reference CIFAR augmentation
(4-pixel zero-padded random crop + horizontal flip, then normalisation) runs on whole batches in
torch, on the training device. Same distribution as the per-image path, different random stream.

Images whose size differs from the model input (Fashion-MNIST is 28x28, the CIFAR presets want
32x32) are resized once, at decode time, with the bilinear filter timm's eval transform uses.
``data.decode_once: auto`` (the default) takes this path whenever the training augmentation has a
batch version (``cifar``) and the decoded pixels fit in ``MAX_DECODED_BYTES``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from .hf import DECODE_ERRORS, DataError, find_undecodable_row, image_error, to_model_mode

__all__ = ['DecodedImages', 'crop_flip_normalize', 'BatchCropFlip', 'BATCH_TRANSFORMS', 'resolve_decode_once']

MAX_DECODED_BYTES = 4 * 1024 ** 3


# Training augmentations that have a whole-batch version (train_transform name -> builder).
BATCH_TRANSFORMS = ('cifar',)


def resolve_decode_once(requested: Any, train_transform: str, num_images: int, input_size: Sequence[int]) -> bool:
    """What ``data.decode_once`` (``auto`` / true / false) means for this data and model input."""
    if requested is False:
        return False
    supported = train_transform in BATCH_TRANSFORMS
    if requested is True:
        if not supported:
            raise DataError(f'data.decode_once supports train_transform {" / ".join(BATCH_TRANSFORMS)} only, not '
                            f'{train_transform!r}; set data.decode_once=auto or false')
        return True
    c, h, w = (int(v) for v in input_size)
    return supported and num_images * c * h * w <= MAX_DECODED_BYTES


def _decoded(ds, index: int, image_column: str):
    """Row ``index``'s image; a DataError naming the row if it does not decode."""
    try:
        return ds[index][image_column]
    except DataError:
        raise
    except DECODE_ERRORS as err:
        raise image_error(ds, index, image_column, err) from None


def _images(ds, image_column: str):
    """The images of ``ds`` in order (the fast column iterator); a DataError naming the first bad row."""
    done = 0
    iterator = iter(ds[image_column])
    while True:
        try:
            image = next(iterator)
        except StopIteration:
            return
        except DataError:
            raise
        except DECODE_ERRORS as err:
            found = find_undecodable_row(ds, image_column, done)  # the column may decode ahead: find the row
            row, cause = found if found is not None else (done, err)
            raise image_error(ds, row, image_column, cause) from None
        yield image
        done += 1


class DecodedImages(TorchDataset):
    """All images of a HF data set decoded once: items are (uint8 tensor C x H x W, label).

    ``size`` (height, width): resize every image to it once (bilinear); None keeps the first
    image's size and requires all images to share it."""

    def __init__(self, ds, image_column: str, label_column: str, in_chans: int = 3,
                 size: Optional[Tuple[int, int]] = None):
        from PIL import Image

        first = to_model_mode(_decoded(ds, 0, image_column), in_chans)
        h, w = size if size is not None else (first.size[1], first.size[0])
        need = len(ds) * in_chans * h * w
        if need > MAX_DECODED_BYTES:
            raise DataError(f'decode_once would hold {need / 1024 ** 3:.1f} GiB of pixels; '
                            'set data.decode_once=false for this data set')
        pixels = np.empty((len(ds), h, w, in_chans), dtype=np.uint8)
        self.resized = 0
        for i, image in enumerate(_images(ds, image_column)):
            image = to_model_mode(image, in_chans)
            if image.size != (w, h):
                if size is None:
                    raise DataError(f'decode_once needs images of one size: image {i} is {image.size[0]}x{image.size[1]}, '
                                    f'the first {w}x{h}; set data.decode_once=false')
                image = image.resize((w, h), Image.BILINEAR)
                self.resized += 1
            pixels[i] = np.asarray(image).reshape(h, w, in_chans)
        self.pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor([int(v) for v in ds[label_column]])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.pixels[index], int(self.labels[index])


def crop_flip_normalize(images: torch.Tensor, padding: int, offsets: torch.Tensor, flips: torch.Tensor,
                        mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Zero-pad uint8 images by ``padding``, crop each at (top, left) = offsets[b], mirror where
    flips[b], scale to [0, 1] and normalise: torchvision's RandomCrop(padding) + RandomHorizontalFlip
    + ToTensor + Normalize for given random draws, for a whole (B, C, H, W) batch at once."""
    b, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)           # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)           # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    out = out.permute(0, 3, 1, 2).float().div_(255)
    mean_t = torch.as_tensor(mean, dtype=out.dtype, device=out.device)[None, :, None, None]
    std_t = torch.as_tensor(std, dtype=out.dtype, device=out.device)[None, :, None, None]
    return (out - mean_t) / std_t


class BatchCropFlip:
    """The reference CIFAR augmentation on a uint8 batch, random draws from torch's global RNG."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], padding: int = 4):
        self.mean, self.std, self.padding = tuple(mean), tuple(std), padding

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        b = images.shape[0]
        offsets = torch.randint(0, 2 * self.padding + 1, (b, 2), generator=generator).to(images.device)
        flips = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        return crop_flip_normalize(images, self.padding, offsets, flips, self.mean, self.std)
