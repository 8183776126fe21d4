"""Hub folders: save, load (every model source), push.

A Hub folder (what a training stage writes, what the zoo ships, what push uploads) holds
``README.md`` (model card), ``config.json`` (timm's, plus a ``mislas`` block), ``model.safetensors``,
``metrics.json`` and ``reliability.png``. Weights and config are written by timm's ``save_for_hf``;
loading goes through ``timm.create_model('local-dir:...' | 'hf-hub:...', pretrained=True)``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from ..plots import reliability_diagram_png
from .card import CardError, check_card_matches_metrics, render_card

__all__ = [
    'HubError', 'HUB_FILES', 'save_hub_folder', 'read_hub_config', 'check_hub_folder', 'resolve_source',
    'load_model', 'push_to_hub', 'render_card', 'check_card_matches_metrics', 'CardError', 'write_json_atomic',
]

HUB_FILES = ('README.md', 'config.json', 'model.safetensors', 'metrics.json', 'reliability.png')


class HubError(ValueError):
    """A model-source or Hub-folder problem with a one-line message that names the fix."""


def write_json_atomic(path: Union[str, Path], data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(data, indent=2) + '\n')
    os.replace(tmp, path)


def save_hub_folder(
        model: torch.nn.Module,
        folder: Union[str, Path],
        *,
        label_names: Optional[list] = None,
        mislas: Optional[Dict[str, Any]] = None,
        metrics: Optional[Dict[str, Any]] = None,
        card_context: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a complete Hub folder atomically: everything goes to a temporary sibling, then a rename.

    ``mislas`` goes into config.json (class_counts, data_seed, imb_factor, split_sha256, rank_split,
    preset, ...). With ``metrics`` the folder also gets metrics.json, reliability.png and a card.
    """
    from timm.models import save_for_hf

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.', dir=folder.parent))
    tmp.chmod(0o755)
    try:
        model_config: Dict[str, Any] = {}
        if label_names:
            model_config['label_names'] = list(label_names)
        if mislas is not None:
            model_config['mislas'] = mislas
        save_for_hf(model, tmp, model_config=model_config, safe_serialization=True)
        (tmp / 'model.safetensors').chmod(0o644)  # safetensors writes 0600; a published folder is readable
        if metrics is not None:
            write_json_atomic(tmp / 'metrics.json', metrics)
            title = (card_context or {}).get('title')
            (tmp / 'reliability.png').write_bytes(
                reliability_diagram_png(metrics['reliability'], metrics['ece'], metrics['top1'], title=title))
            config = json.loads((tmp / 'config.json').read_text())
            (tmp / 'README.md').write_text(render_card(config, metrics, card_context or {}))
        if folder.exists():
            old = folder.with_name(f'.{folder.name}.old')
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_hub_config(folder: Union[str, Path]) -> Dict[str, Any]:
    path = Path(folder) / 'config.json'
    if not path.is_file():
        raise HubError(f'{folder} has no config.json: not a Hub folder (save one with mislas_timm.hub.save_hub_folder)')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HubError(f'{path} is not valid JSON ({err}); re-save the folder') from None


def _check_architecture(arch: Optional[str], where: str) -> None:
    import timm

    from .. import models  # noqa: F401  registers the *_cifar family

    if not arch:
        raise HubError(f'{where}: config.json names no architecture; re-save the folder with save_hub_folder')
    if not timm.is_model(arch):
        raise HubError(f'{where}: architecture {arch!r} is not registered with timm: import the module that '
                       'defines it first (for the MiSLAS CIFAR ResNets: import mislas_timm)')


def check_hub_folder(folder: Union[str, Path]) -> Dict[str, Any]:
    """Validate a Hub folder (config, registered architecture, complete safetensors); return its config."""
    from safetensors import safe_open

    folder = Path(folder)
    config = read_hub_config(folder)
    _check_architecture(config.get('architecture'), str(folder))
    weights = folder / 'model.safetensors'
    if not weights.is_file():
        raise HubError(f'{folder} has no model.safetensors; copy the weights into the folder or re-save it')
    try:
        with safe_open(str(weights), framework='pt') as f:
            for key in f.keys():
                f.get_slice(key)
        expected = _safetensors_size(weights)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise HubError(f'{weights} is unreadable or truncated ({err}); re-download or re-save it') from None
    if weights.stat().st_size < expected:
        raise HubError(f'{weights} is truncated ({weights.stat().st_size} of {expected} bytes); re-download or re-save it')
    return config


def _safetensors_size(path: Path) -> int:
    """The byte size a safetensors file must have according to its own header."""
    with open(path, 'rb') as f:
        header_len = int.from_bytes(f.read(8), 'little')
        header = json.loads(f.read(header_len))
    end = max((v['data_offsets'][1] for k, v in header.items() if k != '__metadata__'), default=0)
    return 8 + header_len + end


def resolve_source(source: str) -> str:
    """Any model source (zoo name, folder path, ``local-dir:PATH``, ``hf-hub:ORG/NAME``) as a timm name."""
    from .. import zoo

    if not isinstance(source, str) or not source:
        raise HubError('model source must be a non-empty string: a zoo name, a folder, local-dir:PATH or hf-hub:ORG/NAME')
    if source.startswith('hf-hub:'):
        if source.count('/') < 1:
            raise HubError(f'{source!r}: write hf-hub:ORG/NAME')
        return source
    if source.startswith('local-dir:'):
        folder = Path(source[len('local-dir:'):]).expanduser()
        check_hub_folder(folder)
        return f'local-dir:{folder.resolve()}'
    entry = zoo.get(source)
    if entry is not None:
        if entry.folder.is_dir():
            check_hub_folder(entry.folder)
            return f'local-dir:{entry.folder}'
        return f'hf-hub:{entry.hub_id}'
    path = Path(source).expanduser()
    if path.is_dir():
        check_hub_folder(path)
        return f'local-dir:{path.resolve()}'
    raise HubError(f'unknown model source {source!r}: not a zoo name ({", ".join(zoo.names())}), not an existing '
                   'folder; write local-dir:PATH or hf-hub:ORG/NAME')


def _hub_config(name: str) -> Dict[str, Any]:
    """config.json of a resolved source (downloaded through huggingface_hub's cache for hf-hub:)."""
    if name.startswith('local-dir:'):
        return read_hub_config(name[len('local-dir:'):])
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(name[len('hf-hub:'):], 'config.json', library_name='timm')
    return json.loads(Path(path).read_text())


def load_model(source: str, **kwargs) -> torch.nn.Module:
    """Load a MiSLAS (or any timm) model from any model source, in eval mode.

    The model carries ``pretrained_cfg`` (input size, mean, std, crop_pct, label_names) and
    ``mislas_config`` (class counts, rank split, ... of the run; ``{}`` if the folder has none).
    """
    import timm

    name = resolve_source(source)
    try:
        config = _hub_config(name)
    except HubError:
        raise
    except Exception as err:  # noqa: BLE001 - network / cache errors from huggingface_hub
        raise HubError(f'cannot fetch {name}: {type(err).__name__}: {err}. Offline? Pass a local folder '
                       '(local-dir:PATH) or fill the Hugging Face cache first') from None
    _check_architecture(config.get('architecture'), source)
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as err:
        if 'Unknown model' in str(err):
            raise HubError(f'{source}: {err}; import the module that registers the architecture first '
                           '(import mislas_timm)') from None
        raise HubError(f'cannot load {source}: {err}') from None
    model.mislas_config = config.get('mislas') or {}
    if config.get('label_names') and not model.pretrained_cfg.get('label_names'):
        model.pretrained_cfg['label_names'] = config['label_names']
    return model.eval()


def push_to_hub(
        folder_or_model: Union[str, Path, torch.nn.Module],
        repo_id: str,
        private: bool = False,
        token: Optional[str] = None,
        commit_message: str = 'Upload MiSLAS model',
        **save_kwargs,
) -> str:
    """Upload a complete Hub folder (or a model, saved to one first) with ``huggingface_hub.upload_folder``.

    The folder is validated first (all of README.md, config.json, model.safetensors, metrics.json,
    reliability.png; card numbers equal metrics.json), so nothing incomplete is uploaded. The token
    comes from ``token`` or the usual huggingface_hub login; it is never printed or written.
    """
    if isinstance(folder_or_model, torch.nn.Module):
        with tempfile.TemporaryDirectory(prefix='mislas-push-') as staging:
            folder = save_hub_folder(folder_or_model, Path(staging) / 'model', **save_kwargs)
            return _upload(folder, repo_id, private, token, commit_message)
    return _upload(Path(folder_or_model), repo_id, private, token, commit_message)


def _upload(folder: Path, repo_id: str, private: bool, token: Optional[str], commit_message: str) -> str:
    from huggingface_hub import HfApi, get_token

    prepare_upload(folder)
    token = token or get_token()
    if not token:
        raise HubError('no Hugging Face token: run `hf auth login` or pass token=... / set HF_TOKEN; nothing was uploaded')
    api = HfApi(token=token, library_name='mislas-timm')
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_url.repo_id, folder_path=str(folder), commit_message=commit_message,
                             allow_patterns=list(HUB_FILES))
    return str(getattr(info, 'commit_url', info))


def prepare_upload(folder: Union[str, Path]) -> Path:
    """Check that ``folder`` is exactly what push_to_hub would upload; return it."""
    folder = Path(folder)
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise HubError(f'{folder} is not a complete Hub folder: missing {missing}; write it with train.py, '
                       'python -m mislas_timm.evaluate or save_hub_folder(..., metrics=...)')
    check_hub_folder(folder)
    metrics = json.loads((folder / 'metrics.json').read_text())
    check_card_matches_metrics((folder / 'README.md').read_text(), metrics)
    return folder
