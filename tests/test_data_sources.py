"""Every data set source train.py accepts, and image-mode conversion."""
import pytest
from PIL import Image

from mislas_timm.data.hf import DataError, ImageClassificationView, load_split, resolve_columns, to_model_mode

from .conftest import make_image_dataset


def test_save_to_disk_folder(tiny_dataset_dir):
    ds = load_split(str(tiny_dataset_dir), 'train')
    assert len(ds) == 240 and resolve_columns(ds) == ('img', 'label')
    with pytest.raises(DataError, match="split 'validation'"):
        load_split(str(tiny_dataset_dir), 'validation')


def test_parquet_folder(tmp_path):
    folder = tmp_path / 'parquet' / 'data'
    folder.mkdir(parents=True)
    make_image_dataset([3, 2], class_names=['a', 'b']).to_parquet(str(folder / 'train-00000-of-00001.parquet'))
    make_image_dataset([1, 1], class_names=['a', 'b']).to_parquet(str(folder / 'test-00000-of-00001.parquet'))
    ds = load_split(str(tmp_path / 'parquet'), 'test')
    assert len(ds) == 2 and ds.features['label'].names == ['a', 'b']


def test_image_folder_with_grayscale_rgba_and_palette(tmp_path):
    root = tmp_path / 'images' / 'train'
    for cls, mode in (('cat', 'L'), ('dog', 'RGBA'), ('fox', 'P')):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new('RGB', (8, 8), (10 * i, 100, 200)).convert(mode).save(root / cls / f'{i}.png')
    ds = load_split(str(tmp_path / 'images'), 'train')
    image_column, label_column = resolve_columns(ds)
    assert ds.features[label_column].names == ['cat', 'dog', 'fox']
    view = ImageClassificationView(ds, image_column, label_column, transform=lambda im: im)
    assert {view[i][0].mode for i in range(len(view))} == {'RGB'}


def test_mode_conversion():
    rgba = Image.new('RGBA', (2, 2), (0, 0, 0, 0))
    assert to_model_mode(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparency on white, not black
    assert to_model_mode(Image.new('L', (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_model_mode(Image.new('RGB', (2, 2)), in_chans=1).mode == 'L'


def test_unreachable_hub_id_names_the_fix(monkeypatch):
    import datasets
    import huggingface_hub
    # Both libraries read the offline switch at import time: set it where they keep it.
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    with pytest.raises(DataError, match='local'):
        load_split('someone/no-such-dataset-anywhere', 'train')


def test_missing_columns(tiny_dataset_dir):
    ds = load_split(str(tiny_dataset_dir), 'train')
    with pytest.raises(DataError, match='--label-column'):
        resolve_columns(ds, label_column='fine_label')
    with pytest.raises(DataError, match='no image column'):
        resolve_columns(ds.remove_columns('img'))


def test_split_list_of_paths_and_labels(tmp_path):
    from mislas_timm.data.hf import dataset_from_split_list
    root = tmp_path / 'ImageNet_LT'
    lines = []
    for i, (folder, label) in enumerate([('n01', 0), ('n01', 0), ('n02', 1), ('n03', 2)]):
        (root / 'train' / folder).mkdir(parents=True, exist_ok=True)
        Image.new('RGB', (12, 10), (i * 50, 0, 0)).save(root / 'train' / folder / f'{i}.JPEG')
        lines.append(f'train/{folder}/{i}.JPEG {label}')
    listing = tmp_path / 'ImageNet_LT_train.txt'
    listing.write_text('\n'.join(lines) + '\n')
    ds = dataset_from_split_list(str(root), str(listing))
    assert ds['label'] == [0, 0, 1, 2] and ds.features['label'].num_classes == 3
    assert ds[2]['image'].size == (12, 10)
    with pytest.raises(DataError, match='--data-root'):
        dataset_from_split_list(str(tmp_path / 'elsewhere'), str(listing))
    listing.write_text('train/n01/0.JPEG zero\n')
    with pytest.raises(DataError, match='expected "relative/path.jpg LABEL"'):
        dataset_from_split_list(str(root), str(listing))
    with pytest.raises(DataError, match='not found'):
        dataset_from_split_list(str(root), str(tmp_path / 'missing.txt'))
