"""Training configurations: YAML presets shipped in ``mislas_timm/presets``, overrides, validation.

A preset may name a ``base`` preset whose keys it overrides (deep merge). ``--set a.b=value``
overrides one key; the value is parsed as YAML (``0.1``, ``true``, ``[3, 7]``, ``null``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, List

import yaml

__all__ = ['ConfigError', 'PRESET_DIR', 'list_presets', 'load_preset', 'load_config_file', 'apply_overrides', 'set_value']

PRESET_DIR = Path(__file__).parent / 'presets'


class ConfigError(ValueError):
    """A configuration problem with a one-line message that names the fix."""


def list_presets() -> List[str]:
    return sorted(p.stem for p in PRESET_DIR.glob('*.yaml') if not p.stem.startswith('_'))


def _deep_merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f'{path} is not valid YAML: {err}') from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path} must hold a YAML mapping of settings')
    return data


def _resolve_bases(data: Dict[str, Any], seen: Iterable[str] = ()) -> Dict[str, Any]:
    base_name = data.pop('base', None)
    if base_name is None:
        return data
    if base_name in seen:
        raise ConfigError(f'preset base cycle through {base_name!r}')
    path = PRESET_DIR / f'{base_name}.yaml'
    if not path.is_file():
        raise ConfigError(f'base preset {base_name!r} does not exist; choose one of {list_presets()}')
    base = _resolve_bases(_read_yaml(path), [*seen, base_name])
    return _deep_merge(base, data)


def load_preset(name: str) -> Dict[str, Any]:
    """The fully resolved settings of a shipped preset."""
    path = PRESET_DIR / f'{name}.yaml'
    if not path.is_file():
        raise ConfigError(f'unknown preset {name!r}; choose one of: {", ".join(list_presets())} '
                          '(or pass --config FILE.yaml)')
    cfg = _resolve_bases(_read_yaml(path), [name])
    cfg['preset'] = name
    return cfg


def load_config_file(path: str) -> Dict[str, Any]:
    """Settings from a user YAML file (it may name a shipped preset as ``base``)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f'config file {path} not found')
    cfg = _resolve_bases(_read_yaml(file))
    cfg.setdefault('preset', file.stem)
    return cfg


def set_value(cfg: Dict[str, Any], key: str, value: Any) -> None:
    """Set the existing key ``a.b.c`` of ``cfg`` in place; unknown keys raise ``ConfigError``."""
    parts = key.strip().split('.')
    node = cfg
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = '.'.join(parts[:depth]) or 'the top level'
            options = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f'no key {part!r} in {where} of the config (keys: {options}); check the spelling')
        if depth < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = value


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """A copy of ``cfg`` with each ``a.b.c=value`` applied (value parsed as YAML); the key must exist."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if '=' not in item:
            raise ConfigError(f'--set expects KEY=VALUE, got {item!r}')
        key, raw = item.split('=', 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f'--set {key}: cannot parse value {raw!r}: {err}') from None
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" as a string; a number is what a user means.
            try:
                value = float(value)
            except ValueError:
                pass
        try:
            set_value(cfg, key, value)
        except ConfigError as err:
            raise ConfigError(f'--set {key}: {err}') from None
    return cfg
