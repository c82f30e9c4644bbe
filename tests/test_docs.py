"""The API reference builds without a warning, and the examples in the docstrings run."""

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_vae

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(pyro_vae.__file__).parent


def test_sphinx_builds_with_warnings_as_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(tmp_path / "html")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    index = (tmp_path / "html" / "index.html").read_text()
    assert "pyro-vae" in index and "estimate_log_likelihood" in index  # the README is the front page
    training = (tmp_path / "html" / "training.html").read_text()
    assert "KLSchedule" in training and "RunFolder" in training  # autodoc found the classes


def test_every_module_is_in_the_api_reference():
    documented = set()
    for page in (ROOT / "docs").glob("*.rst"):
        documented |= {line.split("::")[1].strip() for line in page.read_text().splitlines()
                       if line.startswith(".. automodule::")}
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in PACKAGE.rglob("*.py") if p.name != "__main__.py"}
    missing = sorted(modules - documented - {"pyro_vae"})  # the package itself: the README is the front page
    assert not missing, f"add to docs/*.rst: {missing}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_docstring_examples_run(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    if name.endswith("__main__"):
        return
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
