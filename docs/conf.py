"""Sphinx configuration of the pyro-vae API reference: autodoc from the docstrings, the README as
the front page. Build: ``python -m sphinx -W -b html docs docs/_build/html``."""

project = "pyro-vae"
author = "the pyro-vae developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
