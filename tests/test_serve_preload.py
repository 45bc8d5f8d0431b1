"""`tenantllm serve` preloads tcmalloc and Intel OpenMP for the CPU engine (core/cli/serve.py).

The decision is a pure function of the environment and the libraries found (unit tests); the
real check looks into the running app's engine processes (the session's `app_server`, which
runs `python app.py`, i.e. `tenantllm serve`) for both libraries in /proc/PID/maps.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from core.cli.serve import find_iomp, find_tcmalloc, preload_env
from tests.fixtures.app_server import AppServer

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
IOMP = Path("/venv/lib/libiomp5.so")


def test_both_libraries_go_in_front_when_nothing_is_preloaded() -> None:
    env = preload_env({"PATH": "/bin"}, TCMALLOC, IOMP)
    assert env == {"PATH": "/bin", "LD_PRELOAD": f"{TCMALLOC}:{IOMP}"}


def test_existing_preloads_are_kept_after_ours() -> None:
    env = preload_env({"LD_PRELOAD": "/opt/libfoo.so /opt/libbar.so"}, TCMALLOC, IOMP)
    assert env is not None
    assert env["LD_PRELOAD"] == f"{TCMALLOC}:{IOMP}:/opt/libfoo.so:/opt/libbar.so"


def test_nothing_to_do_when_both_are_preloaded_already() -> None:
    preloaded = {"LD_PRELOAD": "/x/libtcmalloc.so.4:/y/libiomp5.so"}
    assert preload_env(preloaded, TCMALLOC, IOMP) is None


def test_only_the_missing_library_is_added() -> None:
    env = preload_env({"LD_PRELOAD": "/x/libtcmalloc.so.4"}, TCMALLOC, IOMP)
    assert env is not None and env["LD_PRELOAD"] == f"{IOMP}:/x/libtcmalloc.so.4"


@pytest.mark.parametrize("runtime", ["/t/libgomp-a34b3233.so.1", "/usr/lib/llvm/libomp.so"])
def test_no_intel_openmp_beside_another_openmp_runtime(runtime: str) -> None:
    # vLLM asserts that not both iomp and gomp are preloaded: adding iomp would crash it.
    env = preload_env({"LD_PRELOAD": runtime}, TCMALLOC, IOMP)
    assert env is not None and env["LD_PRELOAD"] == f"{TCMALLOC}:{runtime}"


def test_missing_libraries_leave_the_environment_alone() -> None:
    assert preload_env({}, None, None) is None
    assert preload_env({}, None, IOMP) == {"LD_PRELOAD": str(IOMP)}


def _engine_processes(server: AppServer) -> list[psutil.Process]:
    port = int(server.base_url.rsplit(":", 1)[1])
    listening = [
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    ]
    assert listening, f"nothing listens on {port}"
    return psutil.Process(listening[0]).children(recursive=True)


def test_the_running_apps_engine_has_both_libraries_mapped(app_server: AppServer) -> None:
    tcmalloc, iomp = find_tcmalloc(), find_iomp()
    if tcmalloc is None or iomp is None:
        pytest.fail("make setup installs libtcmalloc-minimal4 and intel-openmp; one is missing")
    mapped = []
    for proc in _engine_processes(app_server):
        # vLLM names its processes VLLM::EngineCore, VLLM::Worker... (setproctitle).
        if "VLLM" in " ".join(proc.cmdline()):
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            mapped.append((proc.cmdline()[0], str(tcmalloc) in maps, str(iomp) in maps))
    assert mapped, "no engine process found under the app"
    assert all(t and i for _, t, i in mapped), mapped
