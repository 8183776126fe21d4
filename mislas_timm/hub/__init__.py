"""Hub folders: save, load (every model source), push.

A Hub folder (what a training stage writes, what the zoo ships, what push uploads) holds
``README.md`` (model card), ``config.json`` (timm's, plus a ``mislas`` block), ``model.safetensors``,
``metrics.json`` and ``reliability.png``. Weights and config are written by timm's ``save_for_hf``;
loading resolves the source with :mod:`mislas_timm.sources` (the one resolver, below this module and the
zoo) and goes through ``timm.create_model('local-dir:...' | 'hf-hub:...', pretrained=True)``.
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
from ..sources import (SourceError, check_architecture, check_hub_folder, read_hub_config, resolve_source,
                       source_config, unreachable_message)
from .card import CardError, check_card_matches_metrics, render_card

__all__ = [
    'HubError', 'HUB_FILES', 'save_hub_folder', 'read_hub_config', 'check_hub_folder', 'resolve_source',
    'load_model', 'push_to_hub', 'render_card', 'check_card_matches_metrics', 'CardError', 'write_json_atomic',
]

HUB_FILES = ('README.md', 'config.json', 'model.safetensors', 'metrics.json', 'reliability.png')


# One error class for model sources and Hub folders: the resolver (mislas_timm.sources) raises it,
# callers that catch HubError keep working.
HubError = SourceError


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


def load_model(source: str, *, allow_timm_names: bool = False, **kwargs) -> torch.nn.Module:
    """Load a MiSLAS (or any timm) model from any model source (:func:`mislas_timm.sources.resolve_source`),
    in eval mode; ``kwargs`` go to ``timm.create_model``.

    The model carries ``pretrained_cfg`` (input size, mean, std, crop_pct, label_names) and
    ``mislas_config`` (class counts, rank split, ... of the run; ``{}`` if the folder has none).
    """
    import timm

    name = resolve_source(source, allow_timm_names=allow_timm_names)
    config = source_config(name, source)
    if name.startswith(('local-dir:', 'hf-hub:')):
        check_architecture(config.get('architecture'), source)
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as err:
        if 'Unknown model' in str(err):
            raise HubError(f'{source}: {err}; import the module that registers the architecture first '
                           '(import mislas_timm)') from None
        raise HubError(f'cannot load {source}: {err}') from None
    except OSError as err:  # weights huggingface_hub cannot fetch (offline?), e.g. of a timm pretrained name
        raise HubError(unreachable_message(source, name, err)) from None
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
