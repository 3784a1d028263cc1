"""The documentation site (Sphinx, Markdown pages through MyST, the API from the docstrings):
``sphinx-build -W -b html docs docs/_build/html``, as CI runs it (a warning fails the build)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, from a clone

project = "ablate_lit"
author = "the ablate_lit authors"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # links to a page's sections: [text](page.md#a-heading)
myst_enable_extensions = ["colon_fence"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = False  # not Lightning's docstrings of the hooks a class overrides
autoclass_content = "both"  # a class's docstring, then its __init__'s (the settings)
autodoc_mock_imports: list[str] = []
html_theme = "furo"
html_title = "ablate_lit"
html_static_path: list[str] = []
suppress_warnings = ["myst.header"]  # pages open at a level-1 title and number sections from level 2
