"""deploy/: what the Dockerfiles, compose files and Kubernetes manifests say matches the app.

No container engine runs here, so `make lint` checks the files' syntax (hadolint,
kubernetes-validate, the compose-spec schema) and this test checks their meaning: every
TENANTLLM_* variable they set is a setting and its value is valid (the production config
passes `check_production`), the health checks and probes ask for routes the real app answers
(with the Host header they send), every container runs as a non-root user on a read-only root
filesystem, and secrets reach Kubernetes pods by reference only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.config import Settings, load_settings, reset_settings_cache
from tests.fixtures.common import REPO

DEPLOY = REPO / "deploy"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu"]
COMPOSE_FILES = [DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.scale-out.yml"]
ENV_EXAMPLE = DEPLOY / "tenantllm.env.example"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
APP_UID = 10001
SECRET_SETTINGS = {
    "TENANTLLM_SECRET_KEY",
    "TENANTLLM_MASTER_KEY",
    "TENANTLLM_OIDC_CLIENT_SECRET",
    "TENANTLLM_DATABASE_URL",
    "TENANTLLM_REDIS_URL",
    "TENANTLLM_ENGINE_API_KEY",
}
KNOWN = {f"TENANTLLM_{name.upper()}" for name in Settings.model_fields}


# --- reading the files -------------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """Every `ENV NAME=value` of the Dockerfile."""
    found: dict[str, str] = {}
    for op, args in instructions(dockerfile):
        if op == "ENV":
            found |= dict(re.findall(r"(\w+)=(\S+)", args))
    return found


def env_file(path: Path) -> dict[str, str]:
    """NAME=value lines of an env file."""
    pairs = (line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2 and not p[0].startswith("#")}


def compose_services(path: Path) -> dict[str, dict[str, Any]]:
    """The services of a compose file (YAML merge keys resolved), hidden `x-` blocks left out."""
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["services"])


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, `${VAR:?...}` interpolations replaced by a placeholder."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: re.sub(r"\$\{[^}]*\}", "placeholder", str(v)) for k, v in env.items()}


def k8s_docs() -> list[dict[str, Any]]:
    """Every resource of deploy/k8s/."""
    docs = []
    for path in K8S_FILES:
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def k8s_pods() -> dict[str, dict[str, Any]]:
    """Pod templates of the Deployments, by Deployment name."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in k8s_docs()
        if d["kind"] == "Deployment"
    }


def k8s_app_env() -> tuple[dict[str, str], set[str]]:
    """The app container's settings: plain values (its ConfigMap, `value:`) and secret refs."""
    [container] = k8s_pods()["tenantllm-app"]["containers"]
    maps = {d["metadata"]["name"]: d["data"] for d in k8s_docs() if d["kind"] == "ConfigMap"}
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        values |= maps[source["configMapRef"]["name"]]
    refs = set()
    for var in container.get("env", []):
        if "valueFrom" in var:
            assert set(var["valueFrom"]) == {"secretKeyRef"}, var
            refs.add(var["name"])
        else:
            values[var["name"]] = var["value"]
    return values, refs


# --- every TENANTLLM_* variable set anywhere is a setting ----------------------------------


def every_variable_set() -> dict[str, set[str]]:
    """TENANTLLM_* names set by each file of deploy/."""
    found: dict[str, set[str]] = {}
    for path in DOCKERFILES:
        found[path.name] = set(dockerfile_env(path))
    for path in COMPOSE_FILES:
        services = compose_services(path).values()
        found[path.name] = {name for s in services for name in compose_env(s)}
    found[ENV_EXAMPLE.name] = set(env_file(ENV_EXAMPLE))
    values, refs = k8s_app_env()
    found["k8s"] = set(values) | refs
    return {k: {n for n in v if n.startswith("TENANTLLM_")} for k, v in found.items()}


def test_every_tenantllm_variable_set_is_a_setting() -> None:
    found = every_variable_set()
    # The parsing finds what each file sets (the embedded compose sets all through its env file).
    assert all(found[k] for k in found if k != "docker-compose.yml"), found
    unknown = {where: names - KNOWN for where, names in found.items() if names - KNOWN}
    assert unknown == {}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No TENANTLLM_* variable and no .env file around: only what a test sets is read."""
    for name in [n for n in os.environ if n.startswith("TENANTLLM_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    reset_settings_cache()
    yield monkeypatch
    reset_settings_cache()


def placeholder_secrets(names: set[str], data_dir: Path) -> dict[str, str]:
    """Values of the shape each secret setting needs (the real ones live in a Secret)."""
    values = {name: "s" * 48 for name in names}
    if "TENANTLLM_DATABASE_URL" in names:
        values["TENANTLLM_DATABASE_URL"] = f"sqlite:///{data_dir / 'probe.db'}"
    if "TENANTLLM_REDIS_URL" in names:
        values["TENANTLLM_REDIS_URL"] = "redis://127.0.0.1:6379/0"
    return values


def k8s_settings(env: pytest.MonkeyPatch, data_dir: Path) -> Settings:
    """The app's settings as its Kubernetes pod gets them (secrets as placeholders)."""
    values, refs = k8s_app_env()
    for name, value in {**values, **placeholder_secrets(refs, data_dir)}.items():
        env.setenv(name, value)
    env.setenv("TENANTLLM_DATA_DIR", str(data_dir))
    return load_settings()


def compose_settings(env: pytest.MonkeyPatch, data_dir: Path, service: str) -> Settings:
    """The scale-out compose's app settings: image ENV, then the env file, then `environment`."""
    image = {k: v for k, v in dockerfile_env(DOCKERFILES[0]).items() if k.startswith("TENANTLLM_")}
    example = {k: v or "s" * 48 for k, v in env_file(ENV_EXAMPLE).items()}
    own = compose_env(compose_services(COMPOSE_FILES[1])[service])
    own["TENANTLLM_DATABASE_URL"] = f"sqlite:///{data_dir / 'probe.db'}"
    for name, value in {**image, **example, **own, "TENANTLLM_DATA_DIR": str(data_dir)}.items():
        env.setenv(name, value)
    return load_settings()


def test_compose_apps_read_the_env_file_the_example_is_for() -> None:
    for path in COMPOSE_FILES:
        for name, service in compose_services(path).items():
            if service.get("image", "").startswith("tenantllm") and name != "vllm":
                assert service["env_file"] == ENV_EXAMPLE.name.removesuffix(".example"), name


def test_the_kubernetes_config_passes_the_production_checks(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = k8s_settings(clean_env, tmp_path)
    assert settings.mode == "production" and settings.engine_backend == "openai"
    assert settings.engine_url.startswith("http://tenantllm-vllm:8000")


def test_the_compose_config_passes_the_production_checks(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = compose_settings(clean_env, tmp_path, "app-1")
    assert settings.mode == "production" and settings.engine_url == "http://vllm:8000/v1"


def test_secrets_reach_pods_by_reference_only() -> None:
    values, refs = k8s_app_env()
    assert refs == SECRET_SETTINGS
    assert SECRET_SETTINGS.isdisjoint(values)
    assert not [d for d in k8s_docs() if d["kind"] == "Secret"]  # none shipped with values
    [vllm] = k8s_pods()["tenantllm-vllm"]["containers"]
    [key] = [v for v in vllm["env"] if v["name"] == "VLLM_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["key"] == "engine-api-key"


# --- health checks and probes ask for routes the app answers ---------------------------------

# A route in a health check's command: `.../readyz'` (compose) or `+ '/readyz'` (Dockerfile).
ROUTE_IN_COMMAND = re.compile(r"""(/[a-z]+)'""")


def healthcheck_paths() -> dict[str, set[str]]:
    """The routes each app health check asks for (Dockerfiles' HEALTHCHECK, compose's)."""
    found = {}
    for path in DOCKERFILES:
        [check] = [args for op, args in instructions(path) if op == "HEALTHCHECK"]
        found[path.name] = check
    for path in COMPOSE_FILES:
        for name, service in compose_services(path).items():
            if service.get("image", "").startswith("tenantllm") and name != "vllm":
                found[f"{path.name}:{name}"] = " ".join(service["healthcheck"]["test"])
    return {where: set(ROUTE_IN_COMMAND.findall(text)) for where, text in found.items()}


def app_probes() -> list[tuple[str, str]]:
    """(path, Host header) of every probe of the app's Kubernetes pod."""
    [container] = k8s_pods()["tenantllm-app"]["containers"]
    probes = [container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    return [
        (p["path"], {h["name"]: h["value"] for h in p.get("httpHeaders", [])}.get("Host", ""))
        for p in probes
    ]


async def answers(settings: Settings, path: str, host: str) -> int:
    """The status the real app (without its engine, not started) gives `GET path` for `host`."""
    from core.server import create_app
    from core.services import build_services

    app = create_app(settings, build_services(settings))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        return (await client.get(path)).status_code


def test_health_checks_ask_for_readiness() -> None:
    paths = healthcheck_paths()
    assert len(paths) == 5, paths  # two Dockerfiles, the embedded app, app-1 and app-2
    assert all(routes == {"/readyz"} for routes in paths.values()), paths


async def test_kubernetes_probes_reach_the_health_routes(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = k8s_settings(clean_env, tmp_path)
    probes = app_probes()
    assert {path for path, _ in probes} == {"/healthz", "/readyz"}
    for path, host in probes:
        # /readyz is 503 until the engine is up; never 400 (host refused), 404 or a redirect.
        assert await answers(settings, path, host) in {200, 503}, (path, host)
    assert await answers(settings, "/healthz", "10.1.2.3") == 400  # why probes name a Host


async def test_container_health_checks_reach_readiness(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Inside the container the check asks 127.0.0.1: the env file's allowed hosts keep it."""
    settings = compose_settings(clean_env, tmp_path, "app-2")
    assert await answers(settings, "/readyz", "127.0.0.1") == 503  # not started: no engine


def test_vllm_probes_use_its_health_route() -> None:
    """vLLM's OpenAI server answers /health once its model is loaded (ENVIRONMENT.md)."""
    [container] = k8s_pods()["tenantllm-vllm"]["containers"]
    paths = {container[k]["httpGet"]["path"] for k in ("startupProbe", "readinessProbe")}
    assert paths == {"/health"}
    vllm = compose_services(COMPOSE_FILES[1])["vllm"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


# --- non-root, read-only root filesystem -------------------------------------------------------


def test_dockerfiles_run_as_the_unprivileged_user() -> None:
    for path in DOCKERFILES:
        ops = instructions(path)
        final = ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM") :]
        users = [args for op, args in final if op == "USER"]
        assert users and users[-1].split(":")[0] == str(APP_UID), path.name
        assert any(op == "RUN" and f"--uid {APP_UID}" in args for op, args in final)
        assert ("VOLUME", '["/data"]') in final
        assert dockerfile_env(path)["TENANTLLM_DATA_DIR"] == "/data"


def test_compose_services_never_run_as_root_and_keep_root_read_only() -> None:
    for path in COMPOSE_FILES:
        for name, service in compose_services(path).items():
            assert str(service.get("user", APP_UID)).split(":")[0] not in {"0", "root"}
            if service.get("image", "").startswith("tenantllm"):
                assert service["read_only"] is True, (path.name, name)
                assert "/tmp" in service["tmpfs"]
                assert service["cap_drop"] == ["ALL"]


def test_kubernetes_pods_are_non_root_and_read_only() -> None:
    for name, pod in k8s_pods().items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == APP_UID
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_the_image_builds_the_wheel_from_what_make_dist_uses() -> None:
    """deploy/Dockerfile's stage 1, its .dockerignore and `make dist` name the same sources."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    [sources] = re.findall(r"^DIST_SOURCES := (.*)$", makefile, flags=re.MULTILINE)
    expected = set(sources.split())
    for path in DOCKERFILES:
        copied = set()
        for op, args in instructions(path):
            if op == "COPY" and not args.startswith("--from"):
                copied |= set(args.split()[:-1])
        assert copied == expected, path.name
        ignore = (DEPLOY / f"{path.name}.dockerignore").read_text(encoding="utf-8")
        allowed = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
        assert allowed == expected, path.name
