"""Hugging Face ``datasets`` adapters: loading any source, picking columns, torch views, transforms.

Sources: a Hub id (``uoft-cs/cifar10``), a local folder of parquet files (the Hub's, or written by
pandas / pyarrow without Hugging Face metadata: image bytes as a ``{bytes, path}`` struct or plain
binary, labels as ClassLabel, int or class-name strings), a ``save_to_disk`` folder, an image folder
(``train/<class>/*.png`` with optional ``test/<class>/...``, or ``<class>/*.png`` as a training split
only; class names are the training split's folder names), or a split list of image paths and labels
(ImageNet-LT / iNaturalist / Places-LT ``*.txt`` files: ``relative/path.jpg label`` per line).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms as T

__all__ = [
    'DataError', 'load_split', 'dataset_from_split_list', 'resolve_columns', 'label_names',
    'labels_of', 'ImageClassificationView', 'TRAIN_TRANSFORMS', 'build_train_transform',
    'build_eval_transform', 'to_model_mode', 'check_parquet_files', 'check_arrow_files', 'image_error',
    'find_undecodable_row', 'source_row', 'DECODE_ERRORS', 'SplitNotFound', 'as_image_column', 'encode_labels',
    'is_single_split',
]

IMAGE_COLUMNS = ('img', 'image', 'pixel_values', 'jpg', 'png')
LABEL_COLUMNS = ('label', 'labels', 'fine_label', 'cls', 'class', 'target')


class DataError(ValueError):
    """A data set problem with a one-line message that names the fix.

    Raised in a DataLoader worker, torch re-raises it in the main process as
    ``DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...")``;
    the constructor keeps only the original one-line message then.
    """

    def __init__(self, message='', *args):
        if isinstance(message, str) and message.startswith('Caught DataError') and 'Traceback' in message:
            message = _original_message(message)
        super().__init__(message, *args)


def _original_message(wrapped: str) -> str:
    """The message of the last ``...DataError: message`` line of a formatted traceback."""
    for line in reversed(wrapped.strip().splitlines()):
        head, sep, tail = line.partition('DataError: ')
        if sep and not head.startswith(' '):
            return tail.strip()
    return wrapped.strip().splitlines()[-1]


class SplitNotFound(DataError):
    """The data set has no split of the asked name (``available``: the splits it has, when known).

    Its own class so that a missing *test* split can be answered with a held-out one
    (``dataset.test_fraction``) while any other failure to read the split stays an error."""

    def __init__(self, source: str, split: str, available: Optional[Sequence[str]] = None, detail: str = ''):
        has = f' (has {sorted(available)})' if available is not None else (f': {detail}' if detail else '')
        super().__init__(f'split {split!r} not found in {source}{has}; pass --split / the preset\'s split names')
        self.source, self.split, self.available = source, split, list(available) if available is not None else None


def _one_line(err: BaseException, limit: int = 200) -> str:
    """An error's message on one line of printable characters, at most ``limit`` long."""
    text = ''.join(ch if ch.isprintable() else ' ' for ch in str(err))
    text = ' '.join(text.split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _data_files(folder: Path, suffix: str) -> List[Path]:
    """Files ending in ``suffix`` under ``folder``, sorted, without hidden ones (as ``datasets`` skips them)."""
    return sorted(p for p in folder.rglob(f'*{suffix}') if p.is_file()
                  and not any(part.startswith(('.', '__')) for part in p.relative_to(folder).parts))


def _why_not_parquet(path: Path) -> str:
    """What is wrong with a parquet file whose footer cannot be read."""
    try:
        size = path.stat().st_size
        with open(path, 'rb') as f:
            head = f.read(64)
    except OSError as err:
        return f'cannot be read ({_one_line(err)})'
    if size == 0:
        return 'is empty (0 bytes)'
    if head.startswith(b'version https://git-lfs'):
        return 'is a Git LFS pointer, not the data (run `git lfs pull` in the data set\'s clone)'
    if head.lstrip().startswith((b'<', b'{')):
        return 'is not a parquet file (it holds text / HTML: a failed download?)'
    if not head.startswith(b'PAR1'):
        return 'is not a parquet file (no PAR1 magic bytes at its start)'
    return f'is truncated or corrupt ({size} bytes, no parquet footer)'


def check_parquet_files(folder: Path, deep: bool = False) -> None:
    """DataError naming the first parquet file under ``folder`` that pyarrow cannot read.

    Checks each file's footer (cheap: the metadata only); ``deep`` also reads every row group
    (for damage inside a file whose footer is intact)."""
    import pyarrow.parquet as pq

    for path in _data_files(folder, '.parquet'):
        try:
            meta = pq.read_metadata(path)
        except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError / others for bad files
            raise DataError(f'data file {path} {_why_not_parquet(path)}: download it again or remove it from '
                            f'{folder}') from None
        if deep:
            try:
                f = pq.ParquetFile(path)
                for g in range(meta.num_row_groups):
                    f.read_row_group(g)
            except Exception as err:  # noqa: BLE001
                raise DataError(f'data file {path} is corrupt (row group {g}: {_one_line(err, 120)}): download it '
                                f'again or remove it from {folder}') from None


def check_arrow_files(folder: Path) -> None:
    """DataError naming the first Arrow file of a ``save_to_disk`` folder that pyarrow cannot read."""
    import pyarrow as pa

    for path in _data_files(folder, '.arrow'):
        try:
            with pa.memory_map(str(path)) as source:
                try:
                    pa.ipc.open_stream(source).read_all()
                except pa.ArrowInvalid:
                    source.seek(0)
                    pa.ipc.open_file(source).read_all()
        except Exception as err:  # noqa: BLE001
            raise DataError(f'data file {path} is truncated or corrupt ({_one_line(err, 120)}): re-create {folder} '
                            '(save_to_disk) or download the data set again') from None


class _Quiet:
    """Silence the ``datasets`` parquet builder's own error lines (the DataError names the file instead)."""

    NAMES = ('datasets.packaged_modules.parquet.parquet',)

    def __enter__(self):
        import logging

        self.saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in self.NAMES]
        for logger, _ in self.saved:
            logger.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        for logger, level in self.saved:
            logger.setLevel(level)
        return False


def _is_save_to_disk(path: Path) -> bool:
    return (path / 'dataset_dict.json').exists() or (path / 'state.json').exists()


def is_single_split(source: str) -> bool:
    """Whether ``source`` is a ``save_to_disk`` folder of one ``Dataset`` (not a ``DatasetDict``).

    :func:`load_split` returns such a folder for any split name (the evaluator reads a saved test
    set that way); training treats it as a training split without a test split instead, so that
    it never tests on the images it trains on."""
    path = Path(os.path.expanduser(source))
    return path.is_dir() and (path / 'state.json').exists() and not (path / 'dataset_dict.json').exists()


# Image files an image folder may hold (what PIL opens; compared lower-case).
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pbm')
# Files the ``datasets`` packaged builders read, besides images (a folder with these goes to ``datasets``).
_TABLE_SUFFIXES = ('.parquet', '.arrow', '.csv', '.json', '.jsonl', '.tar')
# The names a split folder of an image folder may have, any case (``datasets``' own list, plus ``val``), and
# the split each one is: ``training/`` is the train split as ``datasets`` reads it.
_SPLIT_FOLDERS = {'train': 'train', 'training': 'train', 'test': 'test', 'testing': 'test', 'eval': 'test',
                  'evaluation': 'test', 'validation': 'validation', 'valid': 'validation', 'val': 'validation',
                  'dev': 'validation'}
_FOLDER_HOLDS = ('parquet files (e.g. data/train-00000-of-00001.parquet and data/test-...), a save_to_disk folder, '
                 'or images in one folder per class (train/<class>/*.png, optionally test/<class>/*.png)')


def _visible(path: Path, root: Path) -> bool:
    """Not hidden and not a cache / metadata folder (``datasets`` skips both)."""
    return not any(part.startswith(('.', '__')) for part in path.relative_to(root).parts)


def _files(folder: Path) -> List[Path]:
    """Every visible file under ``folder``, sorted."""
    out = []
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(('.', '__')))
        out.extend(Path(top) / n for n in names if not n.startswith(('.', '__')))
    return sorted(out)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder_kind(folder: Path) -> str:
    """'table' (data files for ``datasets``), 'images' (an image folder read here) or a DataError for a
    folder with no data at all. An image folder with a ``metadata.*`` file is ``datasets``' format."""
    files = _files(folder)
    suffixes = {f.suffix.lower() for f in files}
    if suffixes & {'.parquet', '.arrow'} or any(f.stem == 'metadata' and not _is_image(f) for f in files):
        return 'table'
    if any(_is_image(f) for f in files):
        return 'images'
    if suffixes & set(_TABLE_SUFFIXES):
        return 'table'
    if not files:
        raise DataError(f'data set folder {folder} is empty: it should hold {_FOLDER_HOLDS}')
    names = ', '.join(str(f.relative_to(folder)) for f in files[:3]) + (', ...' if len(files) > 3 else '')
    raise DataError(f'data set folder {folder} has no data files (only {names}): it should hold {_FOLDER_HOLDS}')


def _class_folders(folder: Path) -> List[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(('.', '__')))


def _image_folder_split(root: Path, split: str, source: str):
    """One split of an image folder as a ``datasets.Dataset`` (columns ``image``: the file, ``label``).

    Layouts: ``root/<split>/<class>/...`` when ``root`` has split folders (``train/``, ``test/``,
    ...), else ``root/<class>/...`` as the training split only. The class names of every split are
    the training split's folder names, sorted (``datasets``' image folder builder would take the
    union of all splits' folders, so a class only the test split has, or an empty training folder,
    would become a class with no training images)."""
    import datasets

    top = _class_folders(root)
    split_folders = [d for d in top if d.name.lower() in _SPLIT_FOLDERS]
    if split_folders:
        by_split: Dict[str, Path] = {}
        for d in split_folders:
            name = _SPLIT_FOLDERS[d.name.lower()]
            if name in by_split:
                raise DataError(f'image folder {root} has two folders for its {name} split, {by_split[name].name}/ '
                                f'and {d.name}/: keep one')
            by_split[name] = d
        # a split is asked for by its name (train) or by its folder's (training/, Train/)
        folder = by_split.get(split) or next((d for d in split_folders if d.name == split), None)
        if folder is None:
            raise SplitNotFound(source, split, list(by_split))
        train_folder = by_split.get('train')
        if train_folder is None:
            raise DataError(f'image folder {root} has no train/ folder (it has {[d.name for d in split_folders]}): '
                            'put the training images in train/<class>/*.png')
    else:
        if split != 'train':
            raise SplitNotFound(source, split, ['train'])
        folder = train_folder = root
    names = [d.name for d in _class_folders(train_folder)]
    loose = [f for f in folder.iterdir() if f.is_file() and _is_image(f)]
    if loose or not names:
        example = f' (e.g. {loose[0].name})' if loose else ''
        raise DataError(f'image folder {folder} holds its images directly{example}, not in class folders: put each '
                        f'class\'s images in their own folder, {folder}/<class>/*.png (the folder name is the class)')
    index = {name: i for i, name in enumerate(names)}
    paths: List[str] = []
    labels: List[int] = []
    for class_folder in _class_folders(folder):
        if class_folder.name not in index:
            raise DataError(f'image folder {class_folder}: class {class_folder.name!r} has no folder in {train_folder} '
                            f'(its classes: {", ".join(names[:10])}{", ..." if len(names) > 10 else ""}): add '
                            'training images of it or remove the folder')
        files = [f for f in _files(class_folder) if _is_image(f)]
        if not files and folder == train_folder:
            raise DataError(f'image folder {class_folder} has no images: class {class_folder.name!r} needs training '
                            'images (*.png, *.jpg, ...): add some or remove the folder')
        paths.extend(str(f) for f in files)
        labels.extend([index[class_folder.name]] * len(files))
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({'image': paths, 'label': labels}, features=features, split=split)
    return ds


def load_split(source: str, split: str):
    """One split of a data set as a ``datasets.Dataset``; see the module docstring for sources.

    Image bytes stored without Hugging Face metadata (pandas / pyarrow parquet) come back as an
    ``Image`` column; labels are left as stored (:func:`encode_labels` maps class names).
    A split the data set does not have raises :class:`SplitNotFound`."""
    import datasets

    from .logs import silence_card_metadata_warning

    silence_card_metadata_warning()  # the one place data is read: a README without YAML is not a problem
    path = Path(os.path.expanduser(source))
    try:
        if path.is_dir() and _is_save_to_disk(path):
            try:
                loaded = datasets.load_from_disk(str(path))
            except (OSError, ValueError, EOFError) as err:
                if isinstance(err, DataError):
                    raise
                if isinstance(err, FileNotFoundError) and err.filename:
                    raise DataError(f'data file {err.filename} of {source} is missing: re-create the folder '
                                    '(save_to_disk) or download the data set again') from None
                check_arrow_files(path)
                raise DataError(f'cannot load {source} ({type(err).__name__}: {_one_line(err, 120)}); re-create it '
                                '(save_to_disk) or download the data set again') from None
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise SplitNotFound(source, split, list(loaded))
                return _with_image_columns(loaded[split])
            return _with_image_columns(loaded)
        if path.exists():
            if not path.is_dir():
                raise DataError(f'{source} is a file; pass a data set folder (parquet files, save_to_disk or image folder) or a Hub id')
            if _folder_kind(path) == 'images':
                return _image_folder_split(path, split, source)
            check_parquet_files(path)
            try:
                with _Quiet():
                    return _with_image_columns(datasets.load_dataset(str(path), split=split))
            except Exception as err:  # noqa: BLE001 - a bad file surfaces as DatasetGenerationError, ArrowInvalid, ...
                if isinstance(err, DataError) or not _is_file_damage(err):
                    raise
                check_parquet_files(path, deep=True)
                raise DataError(f'cannot read the data files of {source} ({type(_root_cause(err)).__name__}: '
                                f'{_one_line(_root_cause(err), 150)}); check its files (download a damaged one '
                                'again)') from None
        if source.count('/') > 1 or source.startswith(('.', '/', '~')):
            raise DataError(f'data set folder {source} does not exist; check the path')
        return _with_image_columns(datasets.load_dataset(source, split=split))
    except DataError:
        raise
    except ValueError as err:
        if 'Unknown split' in str(err) or 'Bad split' in str(err):
            raise SplitNotFound(source, split, detail=_one_line(err, 150)) from None
        if 'split' in str(err).lower():
            raise DataError(f'split {split!r} not found in {source}: {err}') from None
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types for an unreachable Hub
        if not path.exists() and _looks_offline(err):
            raise DataError(
                f'cannot reach the Hugging Face Hub to load {source!r} ({type(err).__name__}); '
                'download it elsewhere and pass the local folder instead, e.g. --dataset ./cifar10') from None
        if not path.exists():
            raise DataError(f'unknown data set {source!r}: not a local folder and not loadable from the Hub '
                            f'({type(err).__name__}: {err})') from None
        raise


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while (err.__cause__ or err.__context__) is not None and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err


def _is_file_damage(err: BaseException) -> bool:
    """Whether a ``load_dataset`` failure looks like a damaged data file (not a split / config problem)."""
    import pyarrow as pa

    chain = [err, _root_cause(err), err.__cause__]
    if any(isinstance(e, (pa.ArrowException, OSError, EOFError)) for e in chain if e is not None):
        return True
    return type(err).__name__ in ('DatasetGenerationError',)


def _looks_offline(err: Exception) -> bool:
    text = f'{type(err).__name__} {err}'.lower()
    return any(word in text for word in ('connect', 'offline', 'resolve', 'network', 'timed out', 'unreachable', 'couldn\'t reach', 'max retries'))


def dataset_from_split_list(data_root: str, list_file: str):
    """A ``datasets.Dataset`` (columns ``image``, ``label``) from a split list of ``path label`` lines."""
    import datasets

    root = Path(data_root)
    if not Path(list_file).is_file():
        raise DataError(f'split list {list_file} not found; see README.md (large data sets) for where to get it')
    paths: List[str] = []
    labels: List[int] = []
    with open(list_file) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
                raise DataError(f'{list_file}:{line_no}: expected "relative/path.jpg LABEL", got {line.strip()!r}')
            paths.append(str(root / parts[0]))
            labels.append(int(parts[1]))
    missing = [p for p in paths[:20] if not Path(p).exists()]
    if missing:
        raise DataError(f'images of {list_file} not found under --data-root {data_root} (e.g. {missing[0]}); '
                        'pass the folder the list paths are relative to')
    num_classes = max(labels) + 1
    features = datasets.Features({
        'image': datasets.Image(),
        'label': datasets.ClassLabel(names=[str(i) for i in range(num_classes)]),
    })
    return datasets.Dataset.from_dict({'image': paths, 'label': labels}, features=features)


def resolve_columns(ds, image_column: Optional[str] = None, label_column: Optional[str] = None) -> Tuple[str, str]:
    """The image and label column names: the given ones (checked) or the first known name present."""
    columns = list(ds.column_names)

    def pick(given: Optional[str], candidates: Sequence[str], what: str, flag: str) -> str:
        if given is not None:
            if given not in columns:
                raise DataError(f'{what} column {given!r} not in the data set (columns: {columns}); pass {flag}')
            return given
        for name in candidates:
            if name in columns:
                return name
        raise DataError(f'no {what} column found (columns: {columns}); pass {flag} NAME')

    return (pick(image_column, IMAGE_COLUMNS, 'image', '--image-column'),
            pick(label_column, LABEL_COLUMNS, 'label', '--label-column'))


def _is_image_bytes(feature) -> bool:
    """Whether a column's feature is image file bytes stored without Hugging Face metadata: a
    ``{bytes, path}`` struct (how ``datasets`` stores images, and what pandas writes for a column of
    such dicts) or plain binary."""
    import datasets

    if isinstance(feature, dict):
        return set(feature) == {'bytes', 'path'} and getattr(feature['bytes'], 'dtype', None) in ('binary', 'large_binary')
    return isinstance(feature, datasets.Value) and feature.dtype in ('binary', 'large_binary')


def as_image_column(ds, image_column: str):
    """``ds`` with ``image_column`` as an ``Image`` column when it holds image bytes without Hugging
    Face metadata (see :func:`_is_image_bytes`); else ``ds`` itself."""
    import datasets

    if _is_image_bytes(ds.features.get(image_column)):
        return ds.cast_column(image_column, datasets.Image())
    return ds


def _with_image_columns(ds):
    """``ds`` with every ``{bytes, path}`` struct column and every binary column of a known image
    column name as an ``Image`` column (what pandas / pyarrow parquet files hold)."""
    for name, feature in ds.features.items():
        if _is_image_bytes(feature) and (isinstance(feature, dict) or name in IMAGE_COLUMNS):
            ds = as_image_column(ds, name)
    return ds


def _is_string(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.Value) and feature.dtype in ('string', 'large_string')


def label_names(ds, label_column: str) -> Optional[List[str]]:
    """Class names: a ``ClassLabel`` column's names, the sorted unique strings of a column of class
    names (parquet written by pandas / pyarrow), else None (integer class indices)."""
    feature = ds.features.get(label_column)
    names = getattr(feature, 'names', None)
    if names:
        return list(names)
    if _is_string(feature):
        values = ds.unique(label_column)
        if None in values:
            row = list(ds[label_column]).index(None)
            raise DataError(f'row {row} of column {label_column!r} has no label: give it one or remove the row')
        return sorted(values)
    return None


def encode_labels(ds, label_column: str, names: Sequence[str], where: str):
    """``ds`` with its label column as class indices into ``names`` (a ``ClassLabel`` column).

    A column of class-name strings, or a ``ClassLabel`` column with other names, is mapped by name;
    a name not in ``names`` is a DataError naming it and ``where`` (e.g. "the test split of D").
    Integer labels are returned as they are (the caller checks their range); so is a ``ClassLabel``
    column with exactly these names."""
    import datasets

    feature = ds.features.get(label_column)
    own = getattr(feature, 'names', None)
    if own is not None:
        if list(own) == list(names):
            return ds
        values = [own[v] if v is not None and 0 <= v < len(own) else None for v in ds[label_column]]
    elif _is_string(feature):
        values = list(ds[label_column])
    else:
        return ds
    index = {name: i for i, name in enumerate(names)}
    if None in values:
        raise DataError(f'row {values.index(None)} of column {label_column!r} ({where}) has no label: give it one or '
                        'remove the row')
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        more = f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''
        shown = ', '.join(repr(n) for n in list(names)[:10]) + (', ...' if len(names) > 10 else '')
        raise DataError(f'{where} has label {unknown[0]!r}{more}, which the training split does not have (its classes: '
                        f'{shown}): fix the label or remove those rows')
    codes = [index[v] for v in values]
    return ds.remove_columns([label_column]).add_column(label_column, codes,
                                                        feature=datasets.ClassLabel(names=list(names)))


def labels_of(ds, label_column: str) -> List[int]:
    """The class index of every row; one line for labels that are no class indices.

    Class-name strings are refused, digits included: ``int('10')`` would disagree with the class
    order :func:`label_names` gives them (sorted strings: '10' before '2')."""
    values = ds[label_column]
    if _is_string(ds.features.get(label_column)):
        first = next((v for v in values if v is not None), None)
        raise DataError(f'column {label_column!r} holds class names (e.g. {first!r}), not class indices: map them '
                        'with mislas_timm.data.hf.encode_labels and the model\'s label_names (train.py does this '
                        'itself)')
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):
        pass
    for row, value in enumerate(values):
        try:
            int(value)
        except (TypeError, ValueError):
            raise DataError(f'row {row} of column {label_column!r} has label {value!r}, not a class index: fix it '
                            'or remove the row') from None
    return [int(v) for v in values]


def to_model_mode(image: Image.Image, in_chans: int = 3) -> Image.Image:
    """Grayscale, RGBA, palette and CMYK images converted to the model's channels (RGB or L)."""
    mode = 'RGB' if in_chans == 3 else 'L'
    if image.mode == mode:
        return image
    if image.mode in ('RGBA', 'LA', 'P', 'PA') and mode == 'RGB':
        # Composite transparency on white instead of letting it turn black.
        rgba = image.convert('RGBA')
        background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert('RGB')
    return image.convert(mode)


# What PIL / datasets raise for bytes that are no (complete) image, or a missing image file.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def source_row(ds, index: int) -> int:
    """The row of the loaded split that row ``index`` of ``ds`` (maybe a ``select`` view) comes from.

    ``datasets`` keeps an index mapping for a ``select`` of scattered rows (long-tail views, shifted
    test sets); a contiguous range is sliced without one, and then the view's own row is returned."""
    indices = getattr(ds, '_indices', None)
    if indices is not None:
        try:
            return int(indices.column(0)[int(index)].as_py())
        except Exception:  # noqa: BLE001 - a private attribute of datasets: fall back to the view's row
            pass
    return int(index)


def image_error(ds, index: int, column: str, err: BaseException) -> DataError:
    """The one-line DataError for an image that does not decode: names the row, column, file and problem."""
    where = f'row {source_row(ds, index)} of column {column!r}'
    split = getattr(ds, 'split', None)
    if split:
        where += f' (split {split})'
    try:
        import datasets

        raw = ds.cast_column(column, datasets.Image(decode=False))[int(index)][column]
        path = raw.get('path') if isinstance(raw, dict) else None
        if path and (raw.get('bytes') is None or Path(path).exists()):
            where += f', file {path}'
    except Exception:  # noqa: BLE001 - the file name is a courtesy
        pass
    if isinstance(err, FileNotFoundError):
        return DataError(f'{where}: image file not found ({_one_line(err, 120)}): restore the file or remove the row')
    from PIL import UnidentifiedImageError

    why = 'not a known image format' if isinstance(err, UnidentifiedImageError) else _one_line(err, 120)
    return DataError(f'{where} is not a decodable image ({type(err).__name__}: {why}): remove or fix it')


def find_undecodable_row(ds, column: str, start: int = 0):
    """(row index, error) of the first row at or after ``start`` whose image does not decode, else None."""
    for i in range(int(start), len(ds)):
        try:
            ds[i][column]
        except DECODE_ERRORS as err:
            if isinstance(err, DataError):
                raise
            return i, err
    return None


class ImageClassificationView(TorchDataset):
    """A torch view of a HF data set: (transformed image tensor, label)."""

    def __init__(self, ds, image_column: str, label_column: str, transform: Callable, in_chans: int = 3):
        self.ds = ds
        self.image_column = image_column
        self.label_column = label_column
        self.transform = transform
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        try:
            row = self.ds[int(index)]
        except DataError:
            raise
        except DECODE_ERRORS as err:
            raise image_error(self.ds, int(index), self.image_column, err) from None
        image = row[self.image_column]
        if not isinstance(image, Image.Image):
            raise DataError(f'column {self.image_column!r} does not hold images (got {type(image).__name__}); '
                            'pass --image-column')
        return self.transform(to_model_mode(image, self.in_chans)), int(row[self.label_column])


def _cifar_train(input_size: int, mean, std, padding: int = 4) -> Callable:
    """Reference CIFAR augmentation: 4-pixel-padded random crop + horizontal flip."""
    return T.Compose([T.RandomCrop(input_size, padding=padding), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(mean, std)])


def _imagenet_train(input_size: int, mean, std, color_jitter: float = 0.4) -> Callable:
    """Reference large-set augmentation: random resized crop, flip, colour jitter."""
    ops = [T.RandomResizedCrop(input_size), T.RandomHorizontalFlip()]
    if color_jitter:
        ops.append(T.ColorJitter(color_jitter, color_jitter, color_jitter, 0))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


# Presets name their training augmentation; this table maps names to builders.
TRAIN_TRANSFORMS: Dict[str, Callable[..., Callable]] = {'cifar': _cifar_train, 'imagenet': _imagenet_train}


def train_transform_options(name: str) -> Tuple[str, ...]:
    """The keyword options of a named training augmentation (``data.train_transform_kwargs``)."""
    import inspect
    params = list(inspect.signature(TRAIN_TRANSFORMS[name]).parameters)
    return tuple(params[3:])  # after input_size, mean, std


def build_train_transform(name: str, data_config: Dict, **kwargs) -> Callable:
    """The named augmentation; options of the other augmentations (a preset's, e.g. the CIFAR family's
    padding under --set data.train_transform=imagenet) are not its own and are left out."""
    if name not in TRAIN_TRANSFORMS:
        raise DataError(f'unknown train transform {name!r}; choose one of {sorted(TRAIN_TRANSFORMS)}')
    options = train_transform_options(name)
    own = {k: v for k, v in kwargs.items() if k in options}
    return TRAIN_TRANSFORMS[name](data_config['input_size'][-1], data_config['mean'], data_config['std'], **own)


def build_eval_transform(model: torch.nn.Module) -> Callable:
    """The model's own eval preprocessing (size, crop_pct, interpolation, mean, std) via timm."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    return create_transform(**config, is_training=False)
