"""The package's shape: each folder is one role in a run, each role imports only the roles it builds
on (no inversion: the data knows no metric, the model side no data, the report no method), nothing
imports in a circle (modules, nor folders), and each concept is defined in one place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ablate_lit"

ROLES = {  # folder -> the folders it may import (besides itself), and why
    "common": set(),  # errors, logs, labels, the family registry, loggers, sharding: no knowledge of a stage
    "stats": {"common"},  # torchmetrics Metrics: statistics of activations, scores of predictions
    "store": {"common"},  # run folders: rows, claims, atomic files, cached objects
    "data": {"common"},  # inputs: text windows, task sequences, images, randomised inputs (no model, no metric)
    "sites": {"common"},  # the hook point of a layer and the hooks on it
    "families": {"common", "sites", "stats"},  # the model side: loading, locating, one LightningModule per family
    "calibration": {"common", "stats", "store", "data"},  # statistics sweeps and their on-disk caches
    "ablation": {"common", "store", "data", "sites", "families"},  # methods, neuron sets, fold mode, fits
    "maps": {"common", "sites", "stats", "ablation"},  # single-unit and attribution maps: points, masks, passes
    "report": {"common", "stats", "store"},  # tables and figures read from stored rows
    "runner": {"common", "stats", "store", "data", "sites", "families", "calibration", "ablation", "maps", "report"},
    "entry": {"common", "stats", "store", "data", "sites", "families", "ablation", "report", "runner"},
    "testing": {"common", "sites", "families"},  # tiny models for tests and smoke configs
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


def role(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROLES else None


def folder(name: str) -> str:
    """The folder a module is in (``ablate_lit.families.loading`` for ``...families.loading.hf``)."""
    path = modules()[name]
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}


def test_every_module_belongs_to_a_role():
    loose = [n for n in GRAPH if n not in ("ablate_lit", "ablate_lit.__main__") and role(n) is None]
    assert not loose, f"modules outside the role folders: {loose}"


def inversions(graph: dict[str, set[str]], name: str) -> list[str]:
    """The imports of ``name`` that go to a role its own does not build on (or to the package top)."""
    mine, bad = role(name), []
    for target in sorted(graph[name]):
        theirs = role(target)
        if theirs is None:
            bad.append(f"{target} (the package top: import the module itself)")
        elif theirs != mine and theirs not in ROLES[mine]:
            bad.append(f"{target} ({theirs}: not a role {mine} builds on)")
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


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if role(n)))
def test_imports_follow_the_roles(name):
    bad = inversions(GRAPH, name)
    assert not bad, f"{name} imports against the roles: {bad}"


def test_no_import_circle():
    found = circle(GRAPH)
    assert found is None, "import circle: " + " -> ".join(found)


def test_no_circle_between_folders():
    """Folders (``families``, ``families.loading``, ``families.locate``, ...) import each other without a
    circle: a type every folder needs lives below them (``sites``), not in one of them."""
    folders: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        if role(name):
            folders.setdefault(folder(name), set()).update(folder(t) for t in targets if role(t))
    graph = {f: targets - {f} for f, targets in folders.items()}
    found = circle(graph)
    assert found is None, "folder circle: " + " -> ".join(found)


def test_the_checks_catch_an_inversion_and_a_circle():
    """The checks above can fail: on a made-up graph they find what is wrong with it."""
    graph = {
        "ablate_lit.data.masked": {"ablate_lit.stats.token_metrics"},  # data does not build on metrics
        "ablate_lit.data.text": {"ablate_lit.data.sampler"},
        "ablate_lit.data.sampler": {"ablate_lit.data.text"},  # a circle within one role
        "ablate_lit.report.importance": {"ablate_lit.ablation.methods"},  # the report knows no method
        "ablate_lit.entry.cli": {"ablate_lit.runner.launch"},
    }
    assert inversions(graph, "ablate_lit.data.masked") and inversions(graph, "ablate_lit.report.importance")
    assert not inversions(graph, "ablate_lit.entry.cli") and not inversions(graph, "ablate_lit.data.text")
    assert circle(graph) == ["ablate_lit.data.sampler", "ablate_lit.data.text", "ablate_lit.data.sampler"]


def definitions() -> dict[str, list[str]]:
    """Module-level public names (classes, functions, CONSTANTS) -> the modules defining them."""
    found: dict[str, list[str]] = {}
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            names = [node.name] if isinstance(node, (ast.ClassDef, ast.FunctionDef)) else []
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
            for n in names:
                if not n.startswith("_") and n != "main":  # each command module has its main
                    found.setdefault(n, []).append(name)
    return found


def test_each_concept_is_defined_in_one_place():
    """A public class, function or constant is defined by one module: a second definition of the same
    name is the same concept declared twice (two Results classes, two resampling counts, ...)."""
    twice = {n: where for n, where in definitions().items() if len(where) > 1}
    assert not twice, twice


def test_every_module_says_what_it_holds():
    """Each module opens with a docstring: the one concept it holds."""
    silent = [n for n, p in modules().items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not silent, silent
