"""Model sources: every way this package names a model, resolved to a name timm loads.

A model source is what :func:`mislas_timm.load_model`, ``train.py --init``, the evaluator, the
calibrator and the demo accept. :func:`resolve_source` turns it into a name that
``timm.create_model(name, pretrained=True)`` loads:

- a zoo tag (``resnet32_cifar.cifar10_lt_if100_mislas``) -> ``local-dir:<its shipped folder>`` (the
  copy inside the package, or ``model_cards/`` of a checkout: :func:`shipped_folder`), else
  ``hf-hub:mislas-timm/<tag>``;
- a Hub or run folder, or ``local-dir:PATH`` -> ``local-dir:<absolute path>``, checked first;
- ``hf-hub:ORG/NAME`` -> as is (huggingface_hub fetches it when it is loaded);
- with ``allow_timm_names``, a timm pretrained name (``resnet50.a1_in1k``) -> as is.

Every problem is a :class:`SourceError` whose one-line message names the source, where it looked and
the fix. This module sits below the Hub folders (:mod:`mislas_timm.hub`) and the zoo, which both use
it; it imports nothing of the package but the tag table in ``models``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .models.pretrained_tags import PRETRAINED_TAGS, hub_id, shipped_folder, zoo_dirs

__all__ = ['SourceError', 'resolve_source', 'source_config', 'zoo_tags', 'shipped_folder', 'zoo_dirs',
           'read_hub_config', 'check_hub_folder', 'check_architecture']


class SourceError(ValueError):
    """A model-source or Hub-folder problem with a one-line message that names the fix.

    ``mislas_timm.hub.HubError`` is this class."""


def zoo_tags() -> list:
    """Every zoo tag (``<arch>.<tag>``), shipped or not, in table order."""
    return [f'{arch}.{tag}' for arch, tag, _ in PRETRAINED_TAGS]


def read_hub_config(folder: Union[str, Path]) -> Dict[str, Any]:
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise SourceError(f'{folder} has no config.json: not a Hub folder (save one with '
                          'mislas_timm.hub.save_hub_folder)')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SourceError(f'{path} is not valid JSON ({err}); re-save the folder') from None


def check_architecture(arch: Optional[str], where: str) -> None:
    """``arch`` must be registered with timm (the MiSLAS families are, by importing this package)."""
    import timm

    if not arch:
        raise SourceError(f'{where}: config.json names no architecture; re-save the folder with save_hub_folder')
    if not timm.is_model(arch):
        raise SourceError(f'{where}: architecture {arch!r} is not registered with timm: import the module that '
                          'defines it first (for the MiSLAS CIFAR ResNets: import mislas_timm)')


def check_hub_folder(folder: Union[str, Path]) -> Dict[str, Any]:
    """Validate a Hub folder (config, registered architecture, complete safetensors); return its config."""
    from safetensors import safe_open

    folder = Path(folder)
    config = read_hub_config(folder)
    check_architecture(config.get('architecture'), str(folder))
    weights = folder / 'model.safetensors'
    if not weights.is_file():
        raise SourceError(f'{folder} has no model.safetensors; copy the weights into the folder or re-save it')
    try:
        with safe_open(str(weights), framework='pt') as f:
            for key in f.keys():
                f.get_slice(key)
        expected = _safetensors_size(weights)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise SourceError(f'{weights} is unreadable or truncated ({_one_line(err)}); '
                          're-download or re-save it') from None
    if weights.stat().st_size < expected:
        raise SourceError(f'{weights} is truncated ({weights.stat().st_size} of {expected} bytes); '
                          're-download or re-save it')
    return config


def _safetensors_size(path: Path) -> int:
    """The byte size a safetensors file must have according to its own header."""
    with open(path, 'rb') as f:
        header_len = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(header_len))
    end = max((v['data_offsets'][1] for k, v in header.items() if k != '__metadata__'), default=0)
    return 8 + header_len + end


def _one_line(err: BaseException) -> str:
    """An exception as one line (huggingface_hub's messages span several)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f'{type(err).__name__}: {lines[0]}' if lines else type(err).__name__


def _kinds(allow_timm_names: bool) -> str:
    return ('a zoo tag, a folder, local-dir:PATH, hf-hub:ORG/NAME' +
            (' or a timm pretrained name (resnet50.a1_in1k)' if allow_timm_names else ''))


def _timm_name(source: str) -> Optional[str]:
    """``source`` if it is a timm pretrained name with weights; a SourceError if timm knows the
    architecture but not those weights; None if timm does not know the architecture."""
    import timm
    from timm.models import is_model_pretrained

    if not timm.is_model(source):
        return None
    if is_model_pretrained(source):
        return source
    arch = source.split('.', 1)[0]
    tags = timm.list_pretrained(f'{arch}.*')
    shown = ', '.join(tags[:8]) + (f', ... ({len(tags)} in all)' if len(tags) > 8 else '')
    listed = f'its pretrained names: {shown}); pass one of those or' if tags else 'it has none); pass'
    raise SourceError(f'{source!r}: timm knows the architecture {arch} but has no pretrained weights of that name '
                      f'({listed} {_kinds(True)}')


def resolve_source(source: str, *, allow_timm_names: bool = False) -> str:
    """Any model source as a name ``timm.create_model(name, pretrained=True)`` loads (see the module doc)."""
    if not isinstance(source, str) or not source.strip():
        raise SourceError(f'model source must be a non-empty string: {_kinds(allow_timm_names)}')
    if source.startswith('hf-hub:'):
        org, _, name = source[len('hf-hub:'):].partition('/')
        if not org or not name:
            raise SourceError(f'{source!r}: write hf-hub:ORG/NAME')
        return source
    if source.startswith('local-dir:'):
        folder = Path(source[len('local-dir:'):]).expanduser()
        if not folder.is_dir():
            raise SourceError(f'{source}: no folder at {folder.resolve()}; pass a Hub or run folder (one holding '
                              'config.json and model.safetensors)')
        check_hub_folder(folder)
        return f'local-dir:{folder.resolve()}'
    if source in zoo_tags():
        folder = shipped_folder(source)
        if folder is not None:
            check_hub_folder(folder)
            return f'local-dir:{folder}'
        return f'hf-hub:{hub_id(*source.split(".", 1))}'
    path = Path(source).expanduser()
    if path.is_dir():
        check_hub_folder(path)
        return f'local-dir:{path.resolve()}'
    if allow_timm_names:
        name = _timm_name(source)
        if name is not None:
            return name
    hint = ''
    if not allow_timm_names:
        from timm.models import is_model_pretrained

        if is_model_pretrained(source):
            hint = ' (it is a timm pretrained name, which only --init / allow_timm_names=True take)'
    raise SourceError(f'unknown model source {source!r}{hint}: not a zoo tag ({", ".join(zoo_tags())}), no folder at '
                      f'{path.resolve()}' + (', not a timm pretrained name' if allow_timm_names else '') +
                      f'; pass {_kinds(allow_timm_names)}')


def source_config(name: str, source: Optional[str] = None) -> Dict[str, Any]:
    """config.json of a resolved source (``hf-hub:`` through huggingface_hub's cache); ``{}`` for a timm
    pretrained name, whose cfg is timm's own. ``source``: what the user wrote, for the error message."""
    if name.startswith('local-dir:'):
        return read_hub_config(name[len('local-dir:'):])
    if not name.startswith('hf-hub:'):
        return {}
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(name[len('hf-hub:'):], 'config.json', library_name='timm')
        return json.loads(Path(path).read_text())
    except Exception as err:  # noqa: BLE001 - network, cache and repository errors of huggingface_hub
        raise SourceError(unreachable_message(source or name, name, err)) from None


def unreachable_message(source: str, name: str, err: BaseException) -> str:
    """One line for a source that resolved to ``hf-hub:`` but cannot be fetched: where it looked, the fix."""
    if source in zoo_tags():
        looked = ', '.join(str(d) for d in zoo_dirs())
        return (f'{source}: no shipped copy (looked in {looked}) and {name} cannot be fetched ({_one_line(err)}); '
                'install a mislas-timm wheel that ships it, set MISLAS_ZOO_DIR to a folder holding '
                f'{source}/, or go online')
    return (f'cannot fetch {name} ({_one_line(err)}); offline? pass a local folder (local-dir:PATH) or fill the '
            'Hugging Face cache first')
