"""The package's import graph, read from the source (every import statement, those inside functions
included): no cycle anywhere, and the building blocks never reach up into the layers that use them."""
import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'mislas_timm'

# The building blocks (models, heads, losses, metrics, data, stage2, plots) import nothing of these,
# directly or through another module.
LOW = ('mislas_timm.models', 'mislas_timm.heads', 'mislas_timm.losses', 'mislas_timm.metrics', 'mislas_timm.data',
       'mislas_timm.stage2', 'mislas_timm.plots')
HIGH = ('mislas_timm.cli', 'mislas_timm.hub', 'mislas_timm.zoo', 'mislas_timm.training', 'mislas_timm.demo', 'mislas_timm.evaluate',
        'mislas_timm.calibrate')


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules(root: Path = PACKAGE) -> Dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob('*.py')) if '__pycache__' not in p.parts}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + '.')


def import_graph(root: Path = PACKAGE) -> Dict[str, Set[str]]:
    """Module -> the package modules it imports. Importing ``a.b.c`` also runs ``a/__init__`` and
    ``a/b/__init__``: those count too, except the importer's own parent packages (already running)."""
    modules = _modules(root)
    top = root.name

    def owner(target: str) -> str:  # the module a dotted target lives in (a name inside a module -> the module)
        while target not in modules and '.' in target:
            target = target.rsplit('.', 1)[0]
        return target

    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        targets: Set[str] = set()
        here = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.split('.')[0] == top)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = '.'.join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ''
                if base.split('.')[0] != top:
                    continue
                targets.add(base)
                # `from pkg import sub` imports the submodule pkg.sub
                targets.update(f'{base}.{a.name}' for a in node.names if f'{base}.{a.name}' in modules)
        edges = set()
        for target in targets:
            target = owner(target)
            parts = target.split('.')
            for i in range(1, len(parts) + 1):
                step = '.'.join(parts[:i])
                if step in modules and not _within(name, step):
                    edges.add(step)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as [a, b, ..., a], or [] if there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


GRAPH = import_graph()


def test_the_graph_sees_lazy_and_relative_imports():
    # hub imports the resolver at module level; zoo imports hub inside functions only
    assert 'mislas_timm.sources' in GRAPH['mislas_timm.hub']
    assert 'mislas_timm.hub' in GRAPH['mislas_timm.zoo']
    assert 'mislas_timm.models' in GRAPH['mislas_timm.sources']  # through models.pretrained_tags
    assert 'mislas_timm.models.pretrained_tags' in GRAPH['mislas_timm.models.resnet_cifar']


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert not cycle, 'import cycle: ' + ' -> '.join(cycle)


@pytest.mark.parametrize('low', LOW)
def test_building_blocks_never_import_the_layers_above(low):
    for name in GRAPH:
        if _within(name, low):
            bad = sorted(t for t in reachable(GRAPH, name) if any(_within(t, high) for high in HIGH))
            assert not bad, f'{name} imports {bad} (directly or through another module)'


def test_the_checks_can_fail(tmp_path):
    """A lazy import inside a function that closes a cycle, and a building block importing the zoo."""
    pkg = tmp_path / 'mislas_timm'
    (pkg / 'models').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'models' / '__init__.py').write_text('from .tags import X\n')
    (pkg / 'models' / 'tags.py').write_text('X = 1\ndef f():\n    from .. import zoo\n')
    (pkg / 'zoo.py').write_text('from .models.tags import X\n')
    graph = import_graph(pkg)
    assert graph['mislas_timm.models.tags'] == {'mislas_timm.zoo'}
    assert graph['mislas_timm.zoo'] == {'mislas_timm.models', 'mislas_timm.models.tags'}
    assert find_cycle(graph) in (['mislas_timm.models.tags', 'mislas_timm.zoo', 'mislas_timm.models.tags'],
                                 ['mislas_timm.models', 'mislas_timm.models.tags', 'mislas_timm.zoo',
                                  'mislas_timm.models'])
    assert 'mislas_timm.zoo' in reachable(graph, 'mislas_timm.models')


def test_every_package_import_names_a_module():
    """A lazy import inside a function fails only when that function runs: after a move (training.py became the
    package training/, its ``from .trackers`` had to become ``from ..trackers``) none may point nowhere."""
    modules = _modules()
    missing = []
    for name, path in modules.items():
        here = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = '.'.join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            elif isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == PACKAGE.name:
                base = node.module
            else:
                continue
            if base not in modules:
                missing.append(f'{name} line {node.lineno}: {base}')
    assert not missing, missing
