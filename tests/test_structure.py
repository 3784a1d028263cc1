"""The package's shape: the folders are the stages of a run, and imports only run down the stages.

Every module of ``ablate_lit`` belongs to a stage package with a rank; a module may import modules of
its own package (without a circle) or of a package of lower rank, never one above it or beside it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ablate_lit"

RANKS = {
    "common": 0,  # errors, logging, atomic signals, sharding, typed labels: no knowledge of any stage
    "stats": 1,  # torchmetrics Metrics
    "store": 1,  # run folders: rows, claims, atomic files
    "data": 2,  # text windows, images, randomised inputs
    "families": 3,  # loading, locating the neurons, hooks, one LightningModule per family
    "ablation": 4,  # methods, neuron sets, fold mode, optimal constants
    "calibration": 4,  # statistics callbacks, the statistics object, the on-disk caches
    "report": 5,  # tables, figures, paired differences, Results
    "runner": 6,  # the experiment: settings, scheduler, trainer, result writer
    "entry": 7,  # the CLI, run(), the report and cache commands
    "testing": 7,  # tiny models for tests and smoke configs
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ablate_lit that ``name`` imports, at the top or inside functions (TYPE_CHECKING too)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("ablate_lit") and m != name}


def stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}


def test_every_module_belongs_to_a_stage():
    loose = [n for n in GRAPH if n not in ("ablate_lit", "ablate_lit.__main__") and stage(n) is None]
    assert not loose, f"modules outside the stage packages: {loose}"


def upward(graph: dict[str, set[str]], name: str) -> list[str]:
    """The imports of ``name`` that go to a stage of the same or a higher rank (or to the package top)."""
    mine, bad = stage(name), []
    for target in sorted(graph[name]):
        theirs = stage(target)
        if theirs is None:
            bad.append(f"{target} (the package top: import the module itself)")
        elif theirs != mine and RANKS[theirs] >= RANKS[mine]:
            bad.append(f"{target} ({theirs}, rank {RANKS[theirs]} >= {mine}, rank {RANKS[mine]})")
    return bad


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a list of modules, the first repeated last), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph or target == "ablate_lit":
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and node != "ablate_lit" and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if stage(n)))
def test_imports_run_down_the_stages(name):
    bad = upward(GRAPH, name)
    assert not bad, f"{name} imports upward or sideways: {bad}"


def test_no_import_circle():
    found = circle(GRAPH)
    assert found is None, "import circle: " + " -> ".join(found)


def test_the_checks_catch_an_upward_import_and_a_circle():
    """The two checks above can fail: on a made-up graph they find what is wrong with it."""
    graph = {
        "ablate_lit.stats.moments": {"ablate_lit.entry.cli"},  # upward
        "ablate_lit.data.text": {"ablate_lit.data.sampler"},
        "ablate_lit.data.sampler": {"ablate_lit.data.text"},  # a circle within one stage
        "ablate_lit.calibration.cache": {"ablate_lit.ablation.methods"},  # sideways: same rank
        "ablate_lit.entry.cli": {"ablate_lit.runner.launch"},
    }
    assert upward(graph, "ablate_lit.stats.moments") and upward(graph, "ablate_lit.calibration.cache")
    assert not upward(graph, "ablate_lit.entry.cli") and not upward(graph, "ablate_lit.data.text")
    assert circle(graph) == ["ablate_lit.data.sampler", "ablate_lit.data.text", "ablate_lit.data.sampler"]


LIMITS = {"module": 300, "class": 200, "function": 60}


def test_modules_classes_and_functions_stay_small():
    """No module over 300 lines, no class over 200, no function over 60: a unit that grows past them
    has grown a second job."""
    too_long = []
    for name, path in modules().items():
        source = path.read_text()
        if len(source.splitlines()) > LIMITS["module"]:
            too_long.append(f"module {name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            kind = (
                "class"
                if isinstance(node, ast.ClassDef)
                else "function"
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                else None
            )
            if kind and node.end_lineno - node.lineno + 1 > LIMITS[kind]:
                too_long.append(f"{kind} {name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long
