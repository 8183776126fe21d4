"""Training configurations: YAML presets shipped in ``mislas_timm/presets``, overrides, and the one
schema (:class:`TrainConfig`) they are all parsed into and validated against before anything runs.

A preset may name a ``base`` preset whose keys it overrides (deep merge). ``--config FILE.yaml``
reads a user file (it may name a shipped preset as ``base``). ``--set a.b=value`` overrides one
key; the value is parsed as YAML (``0.1``, ``true``, ``[3, 7]``, ``null``). The merged mapping is
then parsed by :func:`parse_config`: unknown keys, wrong types, values outside their allowed set or
range stop the run, all of them in one message, one line per key naming the key, the value and what
is allowed. The training code reads the typed fields; defaults live in the dataclasses below and
nowhere else.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import (Any, Dict, Iterable, List, Literal, Optional, Sequence, Union, get_args, get_origin,
                    get_type_hints)

import yaml

__all__ = ['ConfigError', 'PRESET_DIR', 'list_presets', 'load_preset', 'load_config_file', 'apply_overrides', 'set_value',
           'parse_config', 'TrainConfig', 'DatasetConfig', 'LongtailConfig', 'RuntimeConfig', 'ModelConfig',
           'DataConfig', 'GroupsConfig', 'Stage1Config', 'Stage2Config', 'has_validation_split']

PRESET_DIR = Path(__file__).parent / 'presets'


class ConfigError(ValueError):
    """A configuration problem with a one-line message that names the fix.

    A config with several problems is reported at once (:func:`parse_config`), so that one run of the
    command finds them all: ``ConfigError(problems=[...])`` says how many there are on its first line,
    then one line per problem. ``problems`` holds the single lines either way.
    """

    def __init__(self, message: str = '', *, problems: Sequence[str] = ()):
        self.problems: List[str] = list(problems) or [message]
        if len(self.problems) > 1:
            message = f'{len(self.problems)} problems in the config:\n' + '\n'.join(f'  {p}' for p in self.problems)
        else:
            message = self.problems[0]
        super().__init__(message)


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


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parser error in one line: where (line, column; 1-based, as editors count) and what,
    instead of the parser's multi-line dump with a caret under the text."""
    mark = getattr(err, 'problem_mark', None)
    what = getattr(err, 'problem', None) or str(err).strip().splitlines()[0]
    context = getattr(err, 'context', None)
    if context:
        context_mark = getattr(err, 'context_mark', None)
        if context_mark is not None and mark is not None and context_mark.line != mark.line:
            context = f'{context} started on line {context_mark.line + 1}'
        what = f'{what} ({context})'
    where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark is not None else ''
    return ' '.join(f'{where}{what}'.split())


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f'{path} is not valid YAML: {_yaml_problem(err)}') from None
    except UnicodeDecodeError:
        raise ConfigError(f'{path} is not a text file; pass a YAML config file') from None
    except OSError as err:
        raise ConfigError(f'cannot read {path}: {err.strerror or err}') from None
    if not isinstance(data, dict):
        got = 'nothing' if data is None else f'a {type(data).__name__}'
        raise ConfigError(f'{path} must hold a YAML mapping of settings (key: value lines), not {got}')
    return data


def _unknown_preset(name: str, what: str = 'preset') -> ConfigError:
    """The error for a preset name that does not exist: the closest name first, then all of them."""
    presets = list_presets()
    close = difflib.get_close_matches(name, presets, n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    if not close and name.endswith(('.yaml', '.yml')):
        hint = f'to read a file, pass --config {name}; '
    return ConfigError(f'unknown {what} {name!r}: {hint}choose one of: {", ".join(presets)} '
                       '(or pass --config FILE.yaml)')


def _resolve_bases(data: Dict[str, Any], seen: Iterable[str] = ()) -> Dict[str, Any]:
    base_name = data.pop('base', None)
    if base_name is None:
        return data
    if base_name in seen:
        raise ConfigError(f'preset base cycle through {base_name!r}')
    path = PRESET_DIR / f'{base_name}.yaml'
    if not path.is_file():
        raise _unknown_preset(base_name, 'base preset')
    base = _resolve_bases(_read_yaml(path), [*seen, base_name])
    return _deep_merge(base, data)


def load_preset(name: str) -> Dict[str, Any]:
    """The fully resolved settings of a shipped preset."""
    path = PRESET_DIR / f'{name}.yaml'
    if not path.is_file():
        raise _unknown_preset(name)
    cfg = _resolve_bases(_read_yaml(path), [name])
    cfg['preset'] = name
    return cfg


def load_config_file(path: str) -> Dict[str, Any]:
    """Settings from a user YAML file (it may name a shipped preset as ``base``)."""
    file = Path(path)
    if not file.is_file():
        what = 'is a folder, not a file' if file.is_dir() else 'not found'
        raise ConfigError(f'config file {path} {what}; pass a YAML file such as the presets in {PRESET_DIR}')
    cfg = _resolve_bases(_read_yaml(file))
    cfg.setdefault('preset', file.stem)
    return cfg


def _schema_section(parts: List[str]) -> Any:
    """The schema dataclass that holds key ``parts[-1]`` of the section path ``parts[:-1]``, or None."""
    cls: Any = TrainConfig
    for part in parts[:-1]:
        known = {f.name: f for f in fields(cls)} if is_dataclass(cls) else {}
        if part not in known:
            return None
        tp = get_type_hints(cls)[part]
        cls = next((a for a in get_args(tp) if is_dataclass(a)), tp)
    return cls if is_dataclass(cls) else None


def _free_form(path: List[str]) -> bool:
    """Whether the key path ``a.b`` names a free-form mapping of the schema (``model.kwargs``)."""
    holder = _schema_section(path) if path else None
    return holder is not None and get_origin(get_type_hints(holder).get(path[-1])) in (dict, Dict)


def set_value(cfg: Dict[str, Any], key: str, value: Any) -> None:
    """Set key ``a.b.c`` of ``cfg`` in place. The key must exist in ``cfg`` or in the schema
    (:class:`TrainConfig`); free-form mappings (``model.kwargs``) take any key. Else ``ConfigError``."""
    parts = key.strip().split('.')
    node = cfg
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, dict) and part not in node:
            section = _schema_section(parts[:depth + 1])
            if (section is not None and part in {f.name for f in fields(section)}) or _free_form(parts[:depth]):
                node[part] = value if last else {}
            else:
                where = '.'.join(parts[:depth]) or 'the top level'
                options = sorted(f.name for f in fields(section)) if section is not None else sorted(node)
                close = difflib.get_close_matches(part, options, n=1)
                hint = f'did you mean {close[0]!r}? ' if close else ''
                raise ConfigError(f'no key {part!r} in {where} of the config: {hint}keys: {", ".join(options)}')
        elif not isinstance(node, dict):
            where = '.'.join(parts[:depth])
            raise ConfigError(f'{where} is {node!r}, not a section: set {where} first (e.g. --set {where}={{...}})')
        if last:
            node[part] = value
        else:
            node = node[part]


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """A copy of ``cfg`` with each ``a.b.c=value`` applied (value parsed as YAML); the key must exist."""
    cfg = copy.deepcopy(cfg)
    problems: List[str] = []  # every bad --set at once, like the config's own keys
    for item in overrides:
        if '=' not in item:
            problems.append(f'--set expects KEY=VALUE, got {item!r}')
            continue
        key, raw = item.split('=', 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problems.append(f'--set {key}: cannot parse value {raw!r}: {_yaml_problem(err)}')
            continue
        # YAML 1.1 reads "1e-3" as a string; the schema turns it into a number where one is expected.
        try:
            set_value(cfg, key, value)
        except ConfigError as err:
            problems.extend(f'--set {key}: {line}' for line in (getattr(err, 'problems', None) or [str(err)]))
    if problems:
        raise ConfigError(problems=problems)
    return cfg


# ----------------------------------------------------------------------------------------------
# The schema. Allowed values are Literal types; ranges are field metadata; defaults live here only.

def _range(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Dict[str, Any]:
    return {'range': (lo, hi, lo_open, hi_open)}


def _opt(default: Any = None, **meta: Any) -> Any:
    return field(default=default, metadata=meta)


@dataclass
class DatasetConfig:
    source: Optional[str] = None        # Hub id, local parquet folder, save_to_disk folder or image folder
    train_split: str = 'train'
    test_split: str = 'test'
    num_classes: Optional[int] = _opt(None, **_range(2))   # the data must have this many classes (None: any)
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    data_root: Optional[str] = None     # split lists: the folder their image paths are relative to
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    val_list: Optional[str] = None
    val_split: Optional[str] = None     # a validation split of the data set itself
    # Without a long-tail view (no `longtail` section): images per class held out of the training split as
    # the validation split (capped so every class keeps a training image); None: none. With a view, use
    # longtail.val_per_class. A validation split of the data (val_split / val_list) is used instead when given.
    val_per_class: Optional[int] = _opt(None, **_range(1))
    # Data with no test split: this stratified fraction of the training split is held out as the test split
    # (recorded by checksum); null or 0: a missing test split is an error.
    test_fraction: Optional[float] = _opt(0.2, **_range(0, 1, hi_open=True))


@dataclass
class LongtailConfig:
    imb_factor: float = _opt(100.0, **_range(1))          # N_1 / N_K (100, not the reference code's 0.01)
    profile: Literal['exp', 'step'] = 'exp'
    n_max: Optional[int] = _opt(None, **_range(1))        # None: the largest class of the training split
    data_seed: int = _opt(0, **_range(0))
    val_per_class: int = _opt(20, **_range(0))            # validation images per class, held out of training


@dataclass
class RuntimeConfig:
    mixed_precision: Literal['auto', 'no', 'fp16', 'bf16'] = 'auto'
    channels_last: Union[bool, Literal['auto']] = 'auto'
    compile: bool = False


@dataclass
class ModelConfig:
    arch: Optional[str] = 'resnet32_cifar'                 # None: the architecture of model.init (finetune preset)
    pretrained: bool = False
    kwargs: Dict[str, Any] = field(default_factory=dict)   # free-form: passed to timm.create_model
    # The model a run starts from (train.py --init): zoo tag, run / Hub folder, local-dir:PATH, hf-hub:ORG/NAME
    # or a timm pretrained name. Stage 1 fine-tunes its weights; --stage 2 takes it as the stage-1 model.
    init: Optional[str] = None
    # sha256 of init's weights file: filled in when the run starts (and compared on --resume); set it to
    # insist on those exact weights.
    init_sha256: Optional[str] = None
    # None: re-initialise init's classifier when its classes (count or recorded names) differ from the
    # data's, as timm.create_model(name, pretrained=True, num_classes=K) does; true / false: always keep / re-init.
    keep_classifier: Optional[bool] = None
    trunk_weights: Optional[str] = None                    # deprecated alias of init (Places-LT's ImageNet trunk)


@dataclass
class DataConfig:
    # auto: cifar for model inputs up to 64 px, imagenet above (resolved from the model when the run starts)
    train_transform: Literal['cifar', 'imagenet', 'auto'] = 'cifar'
    train_transform_kwargs: Dict[str, Any] = field(default_factory=dict)  # free-form
    # input_size / mean / std / crop_pct null: the model's (model.init's pretrained_cfg, else the architecture's)
    input_size: Optional[List[int]] = _opt(None, length=3, **_range(1))
    mean: Optional[List[float]] = _opt(None, length=3)
    std: Optional[List[float]] = _opt(None, length=3, **_range(0, lo_open=True))
    crop_pct: Optional[float] = _opt(1.0, **_range(0, 1, lo_open=True))
    decode_once: Union[bool, Literal['auto']] = 'auto'
    num_workers: int = _opt(0, **_range(0))
    eval_batch_size: int = _opt(500, **_range(1))


@dataclass
class GroupsConfig:
    rank_split: Optional[List[int]] = _opt(None, length=2, **_range(0))  # head / med / tail rank boundaries


@dataclass
class StageConfig:
    """Settings both stages share."""
    epochs: int = _opt(10, **_range(1))
    batch_size: int = _opt(128, **_range(1))               # global: split over the processes
    lr: float = _opt(0.1, **_range(0, lo_open=True))
    momentum: float = _opt(0.9, **_range(0, 1, hi_open=True))
    weight_decay: float = _opt(2e-4, **_range(0))
    schedule: Literal['step', 'cosine'] = 'cosine'
    warmup_epochs: int = _opt(0, **_range(0))
    milestones: List[int] = _opt(None, **_range(1))
    gamma: float = _opt(0.1, **_range(0, 1, lo_open=True))
    # A stage of fewer optimizer steps than this ends with a precise-BN pass (mislas_timm.precise_bn): its
    # BN running statistics, still mostly their initial values after a few momentum-0.1 updates, are
    # re-estimated on training batches. Longer stages (all paper presets) train exactly as without it; 0: never.
    precise_bn_below_steps: int = _opt(200, **_range(0))


@dataclass
class Stage1Config(StageConfig):
    mixup_alpha: float = _opt(1.0, **_range(0))            # 0 turns mixup off
    loss: Literal['ce', 'balanced_softmax'] = 'ce'
    trainable: Optional[List[str]] = None                  # None: everything trains; else parameter-name prefixes


@dataclass
class Stage2Config(StageConfig):
    head: Literal['mislas', 'lws', 'crt'] = 'mislas'
    shift_bn: bool = False
    lr_factor: float = _opt(1.0, **_range(0, lo_open=True))
    loss: Literal['las', 'ce'] = 'las'
    smooth_head: float = _opt(0.0, **_range(0, 1))         # eps_1
    smooth_tail: float = _opt(0.0, **_range(0, 1))         # eps_K
    las_shape: Literal['concave', 'linear', 'convex', 'exp'] = 'concave'
    las_power: Optional[float] = _opt(None, **_range(0, lo_open=True))
    las_formulation: Literal['official', 'paper'] = 'official'
    samples_per_class: int = _opt(4, **_range(1))
    # [[eps_1, eps_K], ...]: stage 2 trains once per pair (same stage-1 model, seed and sampler stream) and keeps
    # the one with the lowest validation NLL (mislas_timm.stage2_selection); needs a validation split. null:
    # smooth_head / smooth_tail as given (the paper presets).
    smoothing_candidates: Optional[List[List[float]]] = _opt(
        None, expect='a list of [smooth_head, smooth_tail] pairs, each in [0, 1] (e.g. [[0.0, 0.0], [0.3, 0.0]]) '
                     'or null')


@dataclass
class TrainConfig:
    """A complete, validated training configuration (what a preset, --config and --set become)."""
    dataset: DatasetConfig
    model: ModelConfig
    data: DataConfig
    stage1: Stage1Config
    stage2: Stage2Config
    longtail: Optional[LongtailConfig] = None              # None: the data is long-tailed already
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    seed: int = _opt(0, **_range(0))
    description: str = ''
    preset: Optional[str] = None
    limitations: Optional[List[str]] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _describe(tp: Any) -> str:
    """What a type allows, in words for the one-line error."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return 'one of ' + ', '.join(str(a) for a in args)
    if origin is Union:
        parts = [_describe(a) for a in args if a is not type(None)]
        return ' or '.join(parts) + (' or null' if type(None) in args else '')
    if origin in (list, List):
        return f'a list of {_describe(args[0])}s' if args else 'a list'
    if origin in (dict, Dict):
        return 'a mapping'
    if is_dataclass(tp):
        return f'a mapping with keys {", ".join(f.name for f in fields(tp))}'
    return {bool: 'true or false', int: 'a whole number', float: 'a number', str: 'a string'}.get(tp, str(tp))


class _Invalid(Exception):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` or _Invalid (the caller names key, value and what is allowed)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union:
        if value is None:
            if type(None) in args:
                return None
            raise _Invalid
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except _Invalid:
                continue
        raise _Invalid
    if origin is Literal:
        if value is False and 'no' in args:  # YAML 1.1 reads a bare `no` as false
            return 'no'
        if isinstance(value, str) and value in args:
            return value
        raise _Invalid
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise _Invalid
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise _Invalid
        return dict(value)
    if is_dataclass(tp):
        return _parse_section(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise _Invalid
        return int(value)
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads "1e-3" as a string
            except ValueError:
                raise _Invalid from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise _Invalid
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Invalid
    return value


def _check_range(value: Any, meta: Dict[str, Any], key: str) -> None:
    items = value if isinstance(value, list) else [value]
    if 'length' in meta and isinstance(value, list) and len(value) != meta['length']:
        raise ConfigError(f'config key {key}: {value!r} must have {meta["length"]} entries')
    if 'range' not in meta:
        return
    lo, hi, lo_open, hi_open = meta['range']
    for item in items:
        if item is None or isinstance(item, str):
            continue
        bad = (lo is not None and (item <= lo if lo_open else item < lo)) or \
              (hi is not None and (item >= hi if hi_open else item > hi))
        if bad:
            low = '' if lo is None else f'{">" if lo_open else ">="} {lo:g}'
            high = '' if hi is None else f'{"<" if hi_open else "<="} {hi:g}'
            allowed = ' and '.join(x for x in (low, high) if x)
            raise ConfigError(f'config key {key}: {value!r} is out of range; it must be {allowed}')


def _parse_section(cls: Any, raw: Any, prefix: str) -> Any:
    where = prefix or 'the top level'
    if not isinstance(raw, dict):
        raise ConfigError(f'config key {where}: expected {_describe(cls)}, got {raw!r}')
    known = {f.name: f for f in fields(cls)}
    # Every problem of the section (and of the sections inside it) is collected, so that one run reports
    # them all instead of one per attempt.
    problems: List[str] = []
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f'did you mean {close[0]!r}? ' if close else ''
            name = f'{prefix}.{key}' if prefix else key
            problems.append(f'unknown config key {name}: {hint}allowed keys in {where}: {", ".join(known)}')
    hints = get_type_hints(cls)
    values: Dict[str, Any] = {}
    for name, f in known.items():
        key = f'{prefix}.{name}' if prefix else name
        if name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
                problems.append(f'config key {key} is missing ({_describe(hints[name])})')
            continue
        try:
            value = _coerce(raw[name], hints[name], key)
            _check_range(value, dict(f.metadata), key)
        except _Invalid:
            expected = f.metadata.get('expect') or _describe(hints[name])
            problems.append(f'config key {key}: {raw[name]!r} is not allowed; expected {expected}')
        except ConfigError as err:  # out of range, or the problems of a section inside this one
            problems.extend(err.problems)
        else:
            values[name] = value
    if problems:
        raise ConfigError(problems=problems)
    return cls(**values)


def _check_consistency(cfg: TrainConfig) -> None:
    """Rules that span keys; all broken ones are reported at once (one line per key)."""
    problems: List[str] = []
    for stage in ('stage1', 'stage2'):
        sc = getattr(cfg, stage)
        if sc.milestones and sorted(sc.milestones) != list(sc.milestones):
            problems.append(f'config key {stage}.milestones: {sc.milestones} must be increasing')
    s2 = cfg.stage2
    if s2.loss == 'las' and s2.las_shape == 'exp' and s2.las_power is None:
        problems.append('config key stage2.las_power: null, but las_shape exp needs a power > 0; '
                        'set stage2.las_power=...')
    problems += _smoothing_candidates_problems(cfg)
    problems += _validation_is_not_test_problems(cfg)
    # Null input_size / mean / std are the model's, filled in when the run starts
    # (mislas_timm.initialization.resolve_start); the values given must agree with each other.
    d = cfg.data
    given = [len(v) if key != 'input_size' else v[0] for key, v in
             (('input_size', d.input_size), ('mean', d.mean), ('std', d.std)) if v is not None]
    if len(set(given)) > 1:
        problems.append(f'config keys data.mean / data.std need one value per input channel '
                        f'({d.input_size[0] if d.input_size else given[0]})')
    for check, arg in ((_check_transform_options, cfg.data.train_transform_kwargs), (_check_model, cfg)):
        try:
            check(arg)
        except ConfigError as err:
            problems.extend(err.problems)
    split, n = cfg.groups.rank_split, cfg.dataset.num_classes
    if split is not None and split[0] > split[1]:
        problems.append(f'config key groups.rank_split: {split} must be increasing')
    elif split is not None and n is not None and split[1] > n:
        problems.append(f'config key groups.rank_split: {split} goes past dataset.num_classes ({n})')
    if problems:
        raise ConfigError(problems=problems)


def has_validation_split(cfg: TrainConfig) -> bool:
    """Whether the config gives the run a validation split: held out per class (``longtail.val_per_class``
    with a long-tail view, else ``dataset.val_per_class``) or the data's own (``dataset.val_split`` /
    ``dataset.val_list``)."""
    d = cfg.dataset
    held_out = cfg.longtail.val_per_class if cfg.longtail is not None else d.val_per_class
    return bool(held_out or d.val_split or d.val_list)


def _validation_is_not_test_problems(cfg: TrainConfig) -> List[str]:
    """The validation split, where post-hoc methods and stage 2's smoothing are chosen, must not be the test split."""
    d = cfg.dataset
    problems = []
    if d.val_split is not None and d.val_split == d.test_split:
        problems.append(f'config key dataset.val_split: {d.val_split!r} is also the test split; choices made on it '
                        'would be made on the test split: name another split or use dataset.val_per_class')
    if d.val_list is not None and d.val_list == d.test_list:
        problems.append(f'--val-list {d.val_list} is also the --test-list; pass a validation list of its own')
    return problems


def _smoothing_candidates_problems(cfg: TrainConfig) -> List[str]:
    """stage2.smoothing_candidates: [eps_1, eps_K] pairs in [0, 1], each once, with LAS and a validation split."""
    s2, key = cfg.stage2, 'config key stage2.smoothing_candidates'
    candidates = s2.smoothing_candidates
    if candidates is None:
        return []
    if not candidates:
        return [f'{key}: [] names no candidate; give [eps_1, eps_K] pairs such as [[0.0, 0.0], [0.3, 0.0]], '
                'or null to train with stage2.smooth_head / stage2.smooth_tail']
    problems = []
    for i, pair in enumerate(candidates):
        if len(pair) != 2:
            problems.append(f'{key}: entry {i} {pair!r} must be a pair [smooth_head, smooth_tail] (eps_1, eps_K)')
        elif not all(0.0 <= v <= 1.0 for v in pair):
            problems.append(f'{key}: entry {i} {pair!r} is out of range; eps_1 and eps_K must be >= 0 and <= 1')
        elif pair in candidates[:i]:
            problems.append(f'{key}: entry {i} {pair!r} repeats entry {candidates.index(pair)}; list each pair once')
    if s2.loss != 'las':
        problems.append(f'{key}: set, but stage2.loss is {s2.loss}, which has no smoothing to choose; set '
                        'stage2.loss=las or stage2.smoothing_candidates=null')
    if not has_validation_split(cfg):
        where = 'longtail.val_per_class' if cfg.longtail is not None else 'dataset.val_per_class'
        problems.append(f'{key}: choosing stage 2\'s smoothing needs a validation split (never the test split) and '
                        f'this config has none; set {where} (e.g. 20), dataset.val_split or --val-list, or '
                        'stage2.smoothing_candidates=null to train with stage2.smooth_head / stage2.smooth_tail')
    return problems


def _check_model(cfg: TrainConfig) -> None:
    """Where the model and its weights come from: model.init (or its deprecated alias model.trunk_weights),
    model.arch, model.pretrained. Folds the alias into model.init."""
    m = cfg.model
    if m.trunk_weights and m.init and m.trunk_weights != m.init:
        raise ConfigError(f'config keys model.init ({m.init}) and model.trunk_weights ({m.trunk_weights}) disagree: '
                          'model.trunk_weights is the deprecated name of model.init; set model.init only')
    if m.trunk_weights and not m.init:
        m.init = m.trunk_weights
    if m.init and m.pretrained:
        raise ConfigError(f'config keys model.pretrained=true and model.init ({m.init}) both choose the starting '
                          'weights; drop one (--set model.pretrained=false)')
    if m.init_sha256 is not None and not m.init:
        raise ConfigError('config key model.init_sha256 is set but model.init is not: pass --init SOURCE')


def _check_transform_options(kwargs: Dict[str, Any]) -> None:
    """A misspelt augmentation option would otherwise change nothing, silently."""
    from .data.hf import TRAIN_TRANSFORMS, train_transform_options

    known = sorted({option for name in TRAIN_TRANSFORMS for option in train_transform_options(name)})
    problems: List[str] = []
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}" if close else ''
            problems.append(f'config key data.train_transform_kwargs.{key}: no augmentation has this option '
                            f'(known: {", ".join(known)}){hint}')
    if problems:
        raise ConfigError(problems=problems)


def parse_config(raw: Dict[str, Any]) -> TrainConfig:
    """Validate the merged settings against the schema; the one place a configuration is checked.

    Every unknown key, wrong type and out-of-range value is reported in one :class:`ConfigError`, one
    line per key; the rules that span keys (:func:`_check_consistency`) are checked, all of them, once
    every key on its own is valid."""
    if isinstance(raw, TrainConfig):
        return raw
    raw = dict(raw)
    raw.pop('base', None)
    cfg = _parse_section(TrainConfig, raw, '')
    _check_consistency(cfg)
    return cfg
