"""Test configuration: offline, one engine and one app server per pytest run.

Fixtures live in tests/fixtures/, one module per area, so that each area's fixtures are
owned in one place.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Third-party entry-point plugins are not loaded implicitly in tests (datasette/llm style).
sys._called_from_test = True  # type: ignore[attr-defined]

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.engine",
    "tests.fixtures.oidc",
    "tests.fixtures.services",
    "tests.fixtures.app_server",
    "tests.fixtures.browser",
]
