"""The model a run starts from: ``train.py --init SOURCE`` (config key ``model.init``).

Any stage can start from a model. With ``--stage 1`` or ``all`` stage 1 fine-tunes the source's
weights (in ``all``, stage 2 then starts from ``OUT/stage1``); with ``--stage 2`` the source is the
stage-1 model whose classifier stage 2 retrains. A source is anything
:func:`mislas_timm.sources.resolve_source` takes with ``allow_timm_names=True``: a zoo tag, a run or
Hub folder, ``local-dir:PATH``, ``hf-hub:ORG/NAME`` or a timm pretrained name (``resnet50.a1_in1k``).

:func:`resolve_start` runs when the config is validated, before any data is read. It loads the
source once (an unknown or unreachable source stops the run there, in one line), takes the
architecture from it where the config names none, fills ``data.input_size`` / ``mean`` / ``std`` /
``crop_pct`` left null from its ``pretrained_cfg`` and ``data.train_transform: auto`` from the input
size, checks that the source shares weights with the model stage 1 builds, and records the sha256 of
its weights file in ``model.init_sha256``, which a resume compares. :func:`load_init_weights` then
copies the weights into stage 1's model; the classifier is re-initialised when the source's classes
(count or recorded names) differ from the data's, as ``timm.create_model(name, pretrained=True,
num_classes=K)`` does for timm's own weights (``model.keep_classifier`` overrides).

A source of another architecture than the model's (``--model ARCH --init SOURCE``, or Places-LT's
ResNet-152 trunk under its deprecated key ``model.trunk_weights``) gives the tensors both have under
the same name and shape; the model keeps its own preprocessing cfg then.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch

from .config import ConfigError, TrainConfig, parse_config
from .hub import load_model
from .sources import SourceError, _one_line, resolve_source
from .stage2 import classifier_path

__all__ = ['InitSource', 'load_source', 'inspect_source', 'weights_file', 'file_sha256', 'resolve_start',
           'load_init_weights', 'AUTO_TRANSFORM_MAX_SIZE']

logger = logging.getLogger('mislas_timm.train')

# data.train_transform auto: the CIFAR family's pad-and-crop for model inputs up to this size (the CIFAR
# models' 32 px, Tiny-ImageNet's 64), the ImageNet family's random resized crop above it.
AUTO_TRANSFORM_MAX_SIZE = 64

# The data keys a source's pretrained_cfg fills where the config leaves them null.
_DATA_KEYS = ('input_size', 'mean', 'std', 'crop_pct')

# Where timm looks for the weights of a folder or Hub repository, in its order (timm.models._hub).
_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'pytorch_model.pth', 'model.pth',
                 'open_clip_model.safetensors', 'open_clip_pytorch_model.safetensors', 'open_clip_pytorch_model.bin',
                 'open_clip_pytorch_model.pth')


@dataclass(frozen=True)
class InitSource:
    """What a run needs to know about its source before any data is read."""
    source: str                                # as the user wrote it
    name: str                                  # what timm.create_model(name, pretrained=True) loads
    arch: str
    num_classes: int
    label_names: Optional[Tuple[str, ...]]     # None: the source records none
    pretrained_cfg: Dict[str, Any]
    classifier: Optional[str]                  # module path of its classifier (``fc``), None if it has none
    shapes: Dict[str, Tuple[int, ...]]         # state-dict tensor shapes
    weights_file: Optional[str]
    sha256: Optional[str]


def load_source(source: str, key: str = '--init') -> torch.nn.Module:
    """The source model as published, in eval mode, with ``mislas_source_name`` (the timm name it resolved
    to). Problems are a ConfigError naming ``key`` (the flag or config key that gave the source)."""
    import timm

    try:
        name = resolve_source(source, allow_timm_names=True)
        if name.startswith(('local-dir:', 'hf-hub:')):
            model = load_model(name)
        else:
            model = timm.create_model(name, pretrained=True).eval()
            model.mislas_config = {}
    except SourceError as err:
        raise ConfigError(f'{key}: {err}') from None
    except (RuntimeError, OSError, ValueError) as err:  # timm / huggingface_hub: weights that cannot be fetched
        raise ConfigError(f'{key}: cannot load the weights of {source} ({_one_line(err)}); offline? fill the '
                          'Hugging Face cache first or pass a local folder (local-dir:PATH)') from None
    model.mislas_source_name = name
    return model


def weights_file(name: str, pretrained_cfg: Dict[str, Any]) -> Optional[str]:
    """The file timm loaded the weights of the resolved source ``name`` from (None if not found)."""
    if name.startswith('local-dir:'):
        folder = Path(name[len('local-dir:'):])
        found = [folder / f for f in _WEIGHT_FILES if (folder / f).is_file()]
        return str(found[0]) if found else None
    cfg = pretrained_cfg
    repo = name[len('hf-hub:'):] if name.startswith('hf-hub:') else None
    if repo is None:  # a timm pretrained name: timm's order is file, then the Hub, then the url
        if cfg.get('file') and Path(cfg['file']).is_file():
            return str(cfg['file'])
        repo = cfg.get('hf_hub_id')
    if repo:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = repo.partition('@')
        for filename in filter(None, (cfg.get('hf_hub_filename'), *_WEIGHT_FILES, 'pytorch_model.safetensors')):
            hit = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(hit, str):
                return hit
    url = cfg.get('url')
    if url:
        path = Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(urlparse(url).path)
        if path.is_file():
            return str(path)
    return None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _classifier_of(model: torch.nn.Module) -> Optional[str]:
    try:
        return classifier_path(model)
    except TypeError:  # no linear classifier (num_classes=0, a custom head): timm's cfg names it, if anything
        return getattr(model, 'pretrained_cfg', {}).get('classifier')


def inspect_source(source: str, key: str = '--init') -> InitSource:
    """Load ``source`` once and describe it (architecture, classes, preprocessing, weights and their sha256)."""
    model = load_source(source, key)
    name = model.mislas_source_name
    cfg = dict(model.pretrained_cfg)
    labels = cfg.get('label_names')
    path = weights_file(name, cfg)
    return InitSource(
        source=source, name=name, arch=cfg.get('architecture') or type(model).__name__,
        num_classes=int(getattr(model, 'num_classes', None) or cfg.get('num_classes') or 0),
        label_names=tuple(labels) if labels else None, pretrained_cfg=cfg, classifier=_classifier_of(model),
        shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
        weights_file=path, sha256=file_sha256(path) if path else None)


def _in_module(key: str, path: Optional[str]) -> bool:
    return bool(path) and (key == path or key.startswith(f'{path}.'))


def _source_key(cfg: TrainConfig) -> str:
    """How the user named the source, for messages: the flag, or the deprecated key the preset uses."""
    m = cfg.model
    return 'model.trunk_weights' if m.trunk_weights and m.trunk_weights == m.init else '--init'


def _arch_cfg(arch: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The architecture's default pretrained cfg (its preprocessing), without building it where timm has one."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        found = get_pretrained_cfg(arch)
    except RuntimeError:
        found = None
    if found is not None:
        return found.to_dict()
    return dict(timm.create_model(arch, pretrained=False, **kwargs).pretrained_cfg)


def _refuse_kept_classifier(m, source_classes: int, data_classes: int) -> None:
    """model.keep_classifier=true cannot keep a classifier of another class count."""
    if m.keep_classifier and source_classes != data_classes:
        raise ConfigError(f'config key model.keep_classifier=true, but {m.init} has {source_classes} classes and '
                          f'the data {data_classes}; drop model.keep_classifier to re-initialise the classifier')


def check_arch(arch: Optional[str]) -> None:
    """``model.arch`` names a registered timm model (checked before any work)."""
    import timm

    if arch is None:
        raise ConfigError('config key model.arch is null: pass --init SOURCE or --model ARCH')
    if not timm.is_model(arch):
        raise ConfigError(f'config key model.arch: unknown model {arch!r}; pass a timm model name '
                          '(see timm.list_models())')


def _shared_outside_classifier(start: InitSource, arch: str, cfg: TrainConfig) -> List[str]:
    """The source's tensors (outside its classifier) that stage 1's model has under the same name and shape."""
    import timm

    m = cfg.model
    own = timm.create_model(arch, pretrained=False, num_classes=cfg.dataset.num_classes or start.num_classes or 1,
                            **m.kwargs)
    own_classifier = _classifier_of(own)
    shapes = {k: tuple(v.shape) for k, v in own.state_dict().items()}
    return [k for k, shape in start.shapes.items() if shapes.get(k) == shape
            and not _in_module(k, start.classifier) and not _in_module(k, own_classifier)]


def resolve_start(cfg: TrainConfig, stage: str, out: Path) -> Tuple[TrainConfig, Optional[InitSource], List[str]]:
    """The config with what comes from the model filled in, the source (or None), and lines to log.

    The model a run starts from is ``model.init``; a ``--stage 2`` run without one starts from
    ``OUT/stage1``. From it come, where the config leaves them null, the architecture and
    ``data.input_size`` / ``mean`` / ``std`` / ``crop_pct`` (a run from scratch takes them from the
    architecture's default cfg); ``data.train_transform: auto`` becomes ``cifar`` or ``imagenet`` by input
    size; ``model.init_sha256`` gets the sha256 of the source's weights file (one given must match)."""
    cfg = parse_config(cfg)
    m = cfg.model
    key = _source_key(cfg)
    notes: List[str] = []
    if key == 'model.trunk_weights':
        notes.append('model.trunk_weights is deprecated: it is model.init (train.py --init) under its old name')
    source = m.init or (str(out / 'stage1') if stage == '2' else None)
    start = inspect_source(source, key) if source else None
    arch = m.arch
    if stage == '2' and start is not None:
        # Stage 2 takes the stage-1 model as it is; its architecture is the run's.
        if arch and arch != start.arch:
            notes.append(f'model.arch: {start.arch}, the architecture of the stage-1 model {source} (not {arch})')
        arch = start.arch
    elif arch is None:
        if start is None:
            raise ConfigError(f'preset {cfg.preset!r} has no architecture of its own: pass --init SOURCE (the '
                              'pretrained model to fine-tune) or --model ARCH (the same recipe from scratch)')
        arch = start.arch
    check_arch(arch)
    updates: Dict[str, Any] = {'arch': arch}
    if m.init and start is not None:
        if m.init_sha256 and start.sha256 and m.init_sha256 != start.sha256:
            raise ConfigError(f'{key}: the weights of {m.init} ({start.weights_file}) have sha256 {start.sha256}, '
                              f'but model.init_sha256 is {m.init_sha256}: they are not the weights the run started '
                              'from; pass those, or start a new --output-dir')
        updates['init_sha256'] = start.sha256
        if start.sha256 is None:
            notes.append(f'{key}: found no weights file of {m.init} to checksum; init_sha256 not recorded')
        if stage != '2':
            _check_stage1_source(cfg, start, arch, key, notes)
    data_updates, data_notes = _data_from_model(cfg, start if start is not None else None, arch,
                                                same_arch=start is not None and start.arch == arch)
    notes += data_notes
    resolved = replace(cfg, model=replace(m, **updates), data=replace(cfg.data, **data_updates))
    return parse_config(resolved.to_dict()), start, notes


def _check_stage1_source(cfg: TrainConfig, start: InitSource, arch: str, key: str, notes: List[str]) -> None:
    """Refuse, before any data is read, a source stage 1 cannot start from."""
    m = cfg.model
    if arch != start.arch or m.kwargs:
        shared = _shared_outside_classifier(start, arch, cfg)
        if not shared:
            raise ConfigError(f'{key}: {m.init} ({start.arch}) shares no tensor outside its classifier with the model '
                              f'{arch}: pass a source of that architecture, or drop --model to train its own')
        if arch != start.arch:
            notes.append(f'{key}: {arch} starts from the {len(shared)} tensors it shares with {m.init} ({start.arch}); '
                         'the others keep their initialisation')
    n = cfg.dataset.num_classes
    if n is not None:
        _refuse_kept_classifier(m, start.num_classes, n)


def _data_from_model(cfg: TrainConfig, start: Optional[InitSource], arch: str,
                     same_arch: bool) -> Tuple[Dict[str, Any], List[str]]:
    """data.* keys the config leaves null (or ``auto``): from the source's pretrained_cfg when the model is
    the source's architecture, else from the default cfg of the architecture built (a trunk shared with
    another architecture does not bring that one's input size)."""
    d = cfg.data
    missing = [k for k in _DATA_KEYS if getattr(d, k) is None]
    notes: List[str] = []
    updates: Dict[str, Any] = {}
    if missing:
        if start is not None and same_arch:
            model_cfg, where = start.pretrained_cfg, f'the source {start.source}'
        else:
            model_cfg, where = _arch_cfg(arch, cfg.model.kwargs), f'the default cfg of {arch}'
        for k in missing:
            value = model_cfg.get(k)
            if value is None:
                raise ConfigError(f'config key data.{k} is null (take it from the model) but {where} records none; '
                                  f'set it: --set data.{k}=...')
            updates[k] = list(value) if isinstance(value, (list, tuple)) else float(value)
        notes.append('data: ' + ', '.join(f'{k} {updates[k]}' for k in missing) + f' from {where}')
    elif start is not None and same_arch:
        differ = [k for k in ('input_size', 'mean', 'std') if start.pretrained_cfg.get(k) is not None
                  and [float(v) for v in start.pretrained_cfg[k]] != [float(v) for v in getattr(d, k)]]
        if differ:
            notes.append(f'data: the config\'s {", ".join(f"{k} {getattr(d, k)}" for k in differ)} differ from '
                         f'{start.source}\'s ({", ".join(str(list(start.pretrained_cfg[k])) for k in differ)}); '
                         'the config\'s are used')
    if d.train_transform == 'auto':
        size = int((updates.get('input_size') or d.input_size)[-1])
        updates['train_transform'] = 'cifar' if size <= AUTO_TRANSFORM_MAX_SIZE else 'imagenet'
        notes.append(f'data.train_transform auto: {updates["train_transform"]} (model input {size} px)')
    return updates, notes


def _classes_differ(start_labels: Optional[Sequence[str]], start_count: int, labels: Sequence[str]) -> Optional[str]:
    """Why the source's classifier does not fit the data's classes, or None when it does."""
    if start_count != len(labels):
        return f'the source has {start_count} classes, the data {len(labels)}'
    if start_labels is not None and list(start_labels) != list(labels):
        shown = ', '.join(list(start_labels)[:5]) + (', ...' if len(start_labels) > 5 else '')
        mine = ', '.join(list(labels)[:5]) + (', ...' if len(labels) > 5 else '')
        return f'the source\'s classes ({shown}) are not the data\'s ({mine})'
    return None


def load_init_weights(model: torch.nn.Module, cfg: TrainConfig, label_names: Sequence[str]) -> Optional[Dict[str, Any]]:
    """Copy the weights of ``cfg.model.init`` into stage 1's freshly built ``model`` (in place).

    Every tensor of the source the model has under the same name and shape is loaded, the classifier's
    only when the source's classes are the data's (``model.keep_classifier`` overrides); one log line
    names what was re-initialised. Returns the source's pretrained_cfg when the model is the source's
    architecture (its preprocessing is then the run's), else None."""
    m = cfg.model
    key = _source_key(cfg)
    source = load_source(m.init, key)
    source_cfg = dict(source.pretrained_cfg)
    source_classifier = _classifier_of(source)
    own_classifier = _classifier_of(model)
    source_labels = source_cfg.get('label_names')
    source_count = int(getattr(source, 'num_classes', None) or source_cfg.get('num_classes') or 0)
    why = _classes_differ(source_labels, source_count, label_names)
    _refuse_kept_classifier(m, source_count, len(label_names))
    reinit = m.keep_classifier is False or (m.keep_classifier is None and why is not None)
    own = model.state_dict()
    source_state = source.state_dict()
    state = {}
    for k, v in source_state.items():
        if k in own and own[k].shape == v.shape:
            if reinit and (_in_module(k, source_classifier) or _in_module(k, own_classifier)):
                continue
            state[k] = v
    if not any(not (_in_module(k, source_classifier) or _in_module(k, own_classifier)) for k in state):
        raise ConfigError(f'{key}: {m.init} shares no tensor outside its classifier with the model '
                          f'{cfg.model.arch}: pass a source of that architecture')
    model.load_state_dict(state, strict=False)
    logger.info('%s: %d of %d tensors from %s (%s)', key, len(state), len(own), m.init,
                source.mislas_source_name)
    if own_classifier:
        layers = [k for k in own if _in_module(k, own_classifier)]
        if reinit:
            reason = why or 'model.keep_classifier=false'
            shapes = ', '.join(f'{k} {list(source_state[k].shape) if k in source_state else "-"} -> '
                               f'{list(own[k].shape)}' for k in layers)
            logger.info('%s: classifier %s re-initialised (%s): %s', key, own_classifier, reason, shapes)
        else:
            logger.info('%s: classifier %s kept from %s (%s)', key, own_classifier, m.init,
                        'model.keep_classifier=true' if m.keep_classifier else
                        f'the same {source_count} classes' + ('' if source_labels else ', the source records no names'))
    left = [k for k in own if k not in state and not _in_module(k, own_classifier)]
    if left and source_cfg.get('architecture') == cfg.model.arch:
        logger.info('%s: %d tensors of %s not in %s keep their initialisation: %s', key, len(left), cfg.model.arch,
                    m.init, ', '.join(left[:8]) + (', ...' if len(left) > 8 else ''))
    return source_cfg if source_cfg.get('architecture') == cfg.model.arch else None
