"""The house's directions: no import cycle, no upward import, models never import each other, files stay short."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "anomalib_multiclass"
# lower layers never import higher ones; packages of one layer never import each other
LAYERS = {
    "category_map": 0,
    "utils": 0,
    "data": 1,
    "statistics": 1,
    "report": 1,  # the evaluator (2) calls it after each test; it reads files only
    "evaluation": 2,
    "post_processing": 2,
    "visualization": 2,
    "deploy": 3,
    "models": 4,
    "cli": 5,
    "separate": 5,
    "__main__": 6,
    "_registration": 6,  # the glue the installed .pth file loads: it imports the rest on purpose
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (at any depth of its code)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parents, base]).strip(".")
                targets.add(base)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t.startswith("anomalib_multiclass.") and t != name}
    return graph


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def test_every_top_level_module_has_a_layer():
    tops = {_top(m) for m in _imports()} - {"__init__"}
    assert tops <= set(LAYERS), tops - set(LAYERS)


def test_no_upward_or_sideways_import():
    wrong = []
    for source, targets in _imports().items():
        if source == "anomalib_multiclass":
            continue
        for target in targets:
            a, b = _top(source), _top(target)
            if a != b and (LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a])):
                wrong.append(f"{source} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_models_never_import_each_other_and_components_import_no_model():
    wrong = []
    for source, targets in _imports().items():
        if not source.startswith("anomalib_multiclass.models.") or source.count(".") < 3:
            continue
        own = source.split(".")[2]
        for target in targets:
            if target.startswith("anomalib_multiclass.models.") and target.count(".") >= 2:
                other = target.split(".")[2]
                if other not in {own, "components"}:
                    wrong.append(f"{source} -> {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _imports()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycle.extend([*path[path.index(target) :], target] if target in path else [node, target])
                return True
            if target in graph and state.get(target) is None and visit(target, [*path, target]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if state.get(module) is None and visit(module, [module]):
            break
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_source_file_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400
