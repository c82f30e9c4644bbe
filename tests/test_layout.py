"""The layout a newcomer can read: short modules and functions, one stated concept per module,
data flowing one way, every public name documented."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import pyro_vae

PACKAGE = Path(pyro_vae.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60  # code lines, the docstring not counted

# data -> pair -> objective -> training (step, run folder, trainer, train) -> CLI: a layer imports only
# layers below it; inside training, TRAINING_ORDER says the same
LAYERS = {
    "pyro_vae.data": 0, "pyro_vae.likelihoods": 0, "pyro_vae.names": 0, "pyro_vae.distributed": 0,
    "pyro_vae.diagnostics": 0, "pyro_vae.nets": 0, "pyro_vae.plots": 0,
    "pyro_vae.models": 1, "pyro_vae.importance": 1, "pyro_vae.check": 1, "pyro_vae.generate": 1,
    "pyro_vae.pyro_internals": 1, "pyro_vae.recorded": 1,
    "pyro_vae.autoguide": 1,
    "pyro_vae.objectives": 2, "pyro_vae.evaluation": 2, "pyro_vae.latent": 2, "pyro_vae.optim": 2,
    "pyro_vae.training": 3,
    "pyro_vae.cli": 4,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int | None:
    matches = [key for key in LAYERS if name == key or name.startswith(key + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the pyro_vae modules that ``path`` imports."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names.add(target)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("pyro_vae")}


def code_lines(node: ast.AST) -> int:
    """Lines of a function without its docstring."""
    total = node.end_lineno - node.lineno + 1
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        total -= body[0].end_lineno - body[0].lineno + 1
    return total


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_is_short_and_states_its_concept(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: {len(source.splitlines())} lines"
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring, f"{module_name(path)} has no module docstring"
    long = [(n.name, code_lines(n)) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(n) > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} code lines in {module_name(path)}: {long}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_layer_above_it(path):
    own = layer(module_name(path))
    if own is None or module_name(path) == "pyro_vae":
        return
    above = sorted(name for name in imported_modules(path) if (layer(name) or 0) > own)
    assert not above, f"{module_name(path)} (layer {own}) imports {above}"


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in MODULES if module_name(p) not in ("pyro_vae", "pyro_vae.__main__")
               and layer(module_name(p)) is None]
    assert not missing, f"place these modules in LAYERS: {missing}"


@pytest.mark.parametrize("name", pyro_vae.__all__)
def test_every_public_name_is_documented(name):
    obj = getattr(pyro_vae, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        assert inspect.getdoc(obj), f"pyro_vae.{name} has no docstring"


def test_public_names_are_importable_from_their_package():
    for module in ("pyro_vae.training", "pyro_vae.objectives", "pyro_vae.data", "pyro_vae.models", "pyro_vae.cli"):
        mod = importlib.import_module(module)
        for name in mod.__all__:
            assert hasattr(mod, name), f"{module}.__all__ lists {name}, which it does not define"


TRAINING_ORDER = {"step": 0, "checkpoint": 0, "signals": 0, "logger": 0, "schedule": 0, "speed": 0, "pictures": 0,
                  "state": 1, "compiled": 1, "run_folder": 1, "phases": 1, "pair_phases": 2, "step_mode": 2, "trainer": 3, "api": 4}


@pytest.mark.parametrize("name", sorted(TRAINING_ORDER))
def test_training_parts_import_only_the_parts_below_them(name):
    path = PACKAGE / "training" / f"{name}.py"
    parts = [m.split(".")[2] for m in imported_modules(path) if m.startswith("pyro_vae.training.")]
    above = [p for p in parts if TRAINING_ORDER[p] >= TRAINING_ORDER[name]]
    assert not above, f"training.{name} imports training.{above}"


def test_training_order_lists_every_part():
    assert {p.stem for p in (PACKAGE / "training").glob("*.py")} - {"__init__"} == set(TRAINING_ORDER)
