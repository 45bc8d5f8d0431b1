"""The guard in front of Gradio's own routes (issue 12, item 3): the app decides, not Gradio.

Gradio's routes answer any signed-in session: they served any session's component state by
its hash (`deep_link`), any upload to anyone who knew its path (`file=`), uploads from people
who may not upload, and direct calls that skip the queue. `install_gradio_guard` wraps the
mounted Gradio app in `GradioGuard` (asgi.py), which, for every request reaching Gradio:
1. refuses every route not on the allow-list (routes.py) with 404;
2. refuses signed-out callers on everything but the front end's own files (401);
3. binds session hashes to their first principal (sessions.py);
4. lets uploads through only for principals who may upload, capped (upload_route.py);
5. serves and accepts as input only files handed to the caller (uploads.py);
and audits each refusal and each upload (events.py). Payload parsing: payloads.py.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from starlette.routing import Mount

from core.services import Services
from core.ui.gradio_guard.asgi import GradioGuard
from core.ui.gradio_guard.routes import ALLOWED, Rule, allowed_rule
from core.ui.gradio_guard.uploads import UploadRegistry

__all__ = [
    "ALLOWED",
    "GradioGuard",
    "Rule",
    "UploadRegistry",
    "allowed_rule",
    "install_gradio_guard",
]


def install_gradio_guard(
    app: FastAPI, services: Services, static_files: Iterable[str] = ()
) -> GradioGuard:
    """Put the guard between `app` and the Gradio app mounted on it; returns the guard.

    The mount keeps the Gradio app as its base app, so `app.routes` still lists Gradio's
    routes (the route test enumerates them); only requests go through the guard.
    """
    mounts = [r for r in app.router.routes if isinstance(r, Mount) and _is_gradio(r.app)]
    if len(mounts) != 1:
        raise RuntimeError(f"expected one mounted Gradio app, found {len(mounts)}")
    mount = mounts[0]
    gradio_app = mount.app
    registry = UploadRegistry(
        folder=lambda: str(gradio_app.uploaded_file_dir),  # type: ignore[attr-defined]
        ttl_seconds=services.settings.ui_upload_ttl_seconds,
    )
    guard = GradioGuard(gradio_app, services, registry, static_files)
    mount.app = guard
    app.state.gradio_guard = guard
    return guard


def _is_gradio(app: object) -> bool:
    return hasattr(app, "uploaded_file_dir") and hasattr(app, "get_blocks")
