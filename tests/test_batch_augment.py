import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from mislas_timm.data.batch_augment import BatchCropFlip, DecodedImages, crop_flip_normalize
from .tolerances import assert_close_f32

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def test_batch_crop_flip_equals_torchvision_per_image():
    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randint(0, 256, (6, 3, 8, 8), dtype=np.uint8))
    offsets = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [3, 1], [7, 2]])
    flips = torch.tensor([False, True, False, True, True, False])
    got = crop_flip_normalize(images, 4, offsets, flips, MEAN, STD)
    for i in range(6):
        pil = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        ref = TF.crop(TF.pad(pil, 4), int(offsets[i, 0]), int(offsets[i, 1]), 8, 8)  # zero padding, (top, left)
        if flips[i]:
            ref = TF.hflip(ref)
        ref = T.Normalize(MEAN, STD)(T.ToTensor()(ref))
        assert_close_f32(got[i], ref, what=f'image {i}')


def test_random_offsets_are_uniform_and_half_the_images_flip():
    g = torch.Generator().manual_seed(0)
    images = torch.full((4000, 1, 4, 4), 255, dtype=torch.uint8)
    out = BatchCropFlip(MEAN[:1], STD[:1], padding=4)(images, generator=g)
    # overlap of a 4-pixel crop at offset o in [0, 8] with the image at [4, 8): 0,1,2,3,4,3,2,1,0 -> mean 16/9
    expected_padded = 1 - (16 / 9 / 4) ** 2
    assert abs(float((out[:, 0] < 0).float().mean()) - expected_padded) < 0.02
    half = torch.zeros((4000, 1, 4, 4), dtype=torch.uint8)
    half[..., :2] = 255  # bright left half
    out = BatchCropFlip((0.0,), (1.0,), padding=0)(half, generator=g)
    flipped = (out[:, 0, 0, 3] > 0.5).float().mean()
    assert abs(float(flipped) - 0.5) < 0.03


def test_decoded_images(tiny_dataset_dir):
    import datasets
    ds = datasets.load_from_disk(str(tiny_dataset_dir))['test']
    view = DecodedImages(ds, 'img', 'label')
    assert view.pixels.shape == (40, 3, 16, 16) and view.pixels.dtype == torch.uint8
    x, y = view[5]
    assert torch.equal(x.permute(1, 2, 0), torch.from_numpy(np.asarray(ds[5]['img'].convert('RGB'))))
    assert y == ds[5]['label']
