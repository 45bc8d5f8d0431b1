"""Test configuration: offline, one engine and one app server per pytest run.

Fixtures live in tests/fixtures/, one module per area, so that each area's fixtures are
owned in one place.
"""

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Third-party entry-point plugins are not loaded implicitly in tests (datasette/llm style).
sys._called_from_test = True  # type: ignore[attr-defined]

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.engine",
    "tests.fixtures.vllm_server",
    "tests.fixtures.oidc",
    "tests.fixtures.services",
    "tests.fixtures.chroma_server",
    "tests.fixtures.app_server",
    "tests.fixtures.browser",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last, in their collected order.

    Playwright's sync API keeps an event loop running in the main thread from the first
    browser test on (the `browser` fixture lives for the whole run); after that,
    pytest-asyncio cannot run any coroutine test ("Runner.run() cannot be called from a
    running event loop"). So no coroutine test may come after a browser test.
    """
    items.sort(key=lambda item: "new_context" in getattr(item, "fixturenames", ()))
