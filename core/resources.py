"""The files core ships beside its code: the logo, the CSS, the demo documents, the group mapping.

They live in the top-level `assets/` folder of a checkout. An installed wheel has no checkout
around it, so the wheel carries the same folder as `core/assets/` (pyproject.toml maps the
package `core.assets` to `assets/`). Both places are found from this file, never from the
working directory or sys.path: the code that runs reads its own copy's assets, not those of
a checkout or of another install that happens to be about.

Plain paths rather than `importlib.resources` traversables: Gradio takes file names (the
CSS, the favicon, its allowed static files), the parser worker takes file names, and no copy
of tenantllm is ever imported from a zip file.
"""

from __future__ import annotations

from pathlib import Path

_CORE = Path(__file__).resolve().parent


def assets_dir() -> Path:
    """This copy's assets folder: `core/assets/` when installed, else the checkout's `assets/`."""
    installed = _CORE / "assets"
    return installed if installed.is_dir() else _CORE.parent / "assets"


def project_path(relative: Path) -> Path:
    """Where `relative`, written from the project's root (`assets/...`), is in this copy.

    Settings' defaults name assets that way (`assets/group_mapping.yaml`); in a wheel the
    folder that holds `assets/` is the installed `core/` package.
    """
    return assets_dir().parent / relative
