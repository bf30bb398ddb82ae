"""The Kubernetes deployment, checked offline: the Helm chart (charts/hybrid-encoder), the prometheus-adapter values
shipped beside it, and the recording rules behind Triton's autoscaling.

- the chart is rendered and linted with every values file it ships, through Helm's own SDK (helm-python-sdk, no
  binary), at the oldest Kubernetes version it declares and the newest the schemas know;
- every rendered manifest is validated in strict mode: built-in kinds against the Kubernetes OpenAPI schemas of
  both versions (kubernetes-validate: an API version that Kubernetes removed has no schema and fails), the
  prometheus-operator resources against their CRD schemas (tests/data/prometheus-operator);
- the wiring: GPU, /dev/shm, probes, explicit model control and connection age on Triton; the gateway's DNS
  target is the headless Service; the HPA's metric is the one prometheus-adapter serves from the recorded series;
- `promtool check rules` and `promtool test rules` on the recording rules, the adapter's query evaluated on the
  same series, with several loaded models (the averaging trap of Triton server issue #8979 is shown to fail).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from hybrid.contracts import ENSEMBLES
from service.settings import Settings
from service.triton_client import parse_target

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "hybrid-encoder"
ADAPTER_VALUES = ROOT / "charts" / "prometheus-adapter-values.yaml"
RULES = CHART / "rules" / "triton-autoscaling.rules.yml"
RULES_TEST = ROOT / "tests" / "data" / "prometheus" / "triton-autoscaling.test.yml"
CRD_SCHEMAS = ROOT / "tests" / "data" / "prometheus-operator"
RELEASE, NAMESPACE = "demo", "serving"
RATIO = "namespace_pod:triton_queue_compute:ratio"

VALUES_FILES = [None, *sorted((CHART / "ci").glob("*.yaml"))]
VALUES_IDS = ["defaults", *(p.stem for p in VALUES_FILES[1:])]


def _min_kube_version() -> str:
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)\.\d+(-0)?", constraint)
    assert match, f"kubeVersion {constraint!r}: expected a lower bound >=X.Y.Z"
    return match.group(1)


KUBE_VERSIONS = [_min_kube_version(), ".".join(kubernetes_validate.latest_version().split(".")[:2])]


def _values(path: Path | None) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path else {}


@functools.cache
def _rendered(path: Path | None) -> tuple[str, ...]:
    with helm.Chart.load(CHART) as chart:
        templates = chart.render(_values(path), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return tuple(text for name, text in sorted(templates.items()) if not name.endswith("NOTES.txt"))


def manifests(path: Path | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders with the values file at `path` (defaults: None), fresh copies."""
    return [doc for text in _rendered(path) for doc in yaml.safe_load_all(text) if doc]


def the(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(f"-{component}")]
    assert len(found) == 1, f"{len(found)} {kind} for {component}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env(container_spec: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_spec.get("env", [])}


def flag(args: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]


def quantity_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", text)
    assert match, text
    return int(match.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[match.group(2)]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------------------
# Schema validation: built-in kinds through kubernetes-validate, prometheus-operator kinds through their CRDs.


def _strict(schema: Any) -> Any:
    """A CRD schema as the API server's strict field validation applies it: declared properties only."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    result = {k: _strict(v) for k, v in schema.items()}
    declared = "properties" in result and "additionalProperties" not in result
    if declared and not result.get("x-kubernetes-preserve-unknown-fields"):
        result["additionalProperties"] = False
    return result


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in CRD_SCHEMAS.glob("*.json"):
        crd = json.loads(path.read_text())
        schemas[(crd["apiVersion"], crd["kind"])] = _strict(crd["openAPIV3Schema"])
    return schemas


def schema_errors(doc: dict[str, Any], version: str) -> list[str]:
    """Why `doc` would not be accepted by a Kubernetes `version` API server (strict); empty when it would."""
    where = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')} ({doc.get('apiVersion')}, Kubernetes {version})"
    crd = _crd_schemas().get((doc.get("apiVersion"), doc.get("kind")))
    if crd is not None:
        validator = jsonschema.Draft7Validator(crd)
        return [f"{where}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    if str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
        return [f"{where}: no CRD schema in {CRD_SCHEMAS.name}"]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: Kubernetes {version} has no such API (removed or misspelt)"]
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUES_FILES, ids=VALUES_IDS)
def test_every_manifest_validates_strictly(values_file: Path | None, version: str) -> None:
    docs = manifests(values_file)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service"} and len(docs) >= 4
    errors = [error for doc in docs for error in schema_errors(doc, version)]
    assert errors == []


@pytest.mark.parametrize(
    ("kind", "component", "mutate", "expected"),
    [
        ("HorizontalPodAutoscaler", "triton", lambda d: d.update(apiVersion="autoscaling/v2beta2"), "no such API"),
        ("PodDisruptionBudget", "triton", lambda d: d.update(apiVersion="policy/v1beta1"), "no such API"),
        ("Deployment", "triton", lambda d: d["spec"].update(replica=2), "replica"),
        (
            "Deployment",
            "triton",
            lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="6m"),
            "terminationGracePeriodSeconds",
        ),  # fmt: skip
        ("Service", "triton", lambda d: d["spec"]["ports"][0].update(port="http"), "port"),
        ("PodMonitor", "triton", lambda d: d["spec"].update(podMetricEndpoints=[]), "podMetricEndpoints"),
        ("PrometheusRule", "triton", lambda d: d["spec"]["groups"][0].update(rule=[]), "rule"),
        ("ServiceMonitor", "gateway", lambda d: d["spec"]["endpoints"][0].update(interval=15), "interval"),
    ],
)
def test_validation_refuses_defects(kind: str, component: str, mutate: Any, expected: str) -> None:
    doc = copy.deepcopy(the(manifests(), kind, component))
    assert schema_errors(doc, KUBE_VERSIONS[-1]) == []
    mutate(doc)
    errors = schema_errors(doc, KUBE_VERSIONS[-1])
    assert errors and expected in " ".join(errors), errors


# ---------------------------------------------------------------------------------------------------------
# Helm lint and the values schema.


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUES_FILES, ids=VALUES_IDS)
def test_chart_lints_clean(values_file: Path | None, version: str) -> None:
    report = helm.lint(CHART, _values(values_file), strict=True, namespace=NAMESPACE, kube_version=f"v{version}.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 2 warning, 3 error


@pytest.mark.parametrize(
    "bad",
    [
        {"triton": {"shmSize": 8}},
        {"triton": {"shm_size": "8Gi"}},
        {"triton": {"modelRepository": {"source": "s3"}}},
        {"triton": {"modelRepository": {"export": {"args": ["--out", "/elsewhere"]}}}},
        {"triton": {"loadModels": []}},
        {"triton": {"autoscaling": {"minReplicas": 0}}},
        {"triton": {"autoscaling": {"targetQueueComputeRatio": "one"}}},
        {"triton": {"extraArgs": ["model-control-mode=poll"]}},
        {"gateway": {"ingress": {"path": "api"}}},
        {"profile": "huge"},
        {"monitoring": {"interval": "15"}},
    ],
    ids=lambda bad: json.dumps(bad),
)
def test_values_schema_refuses_bad_values(bad: dict[str, Any]) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)
        with pytest.raises(helm.HelmValuesError):
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=VALUES_IDS)
def test_shipped_values_pass_the_schema(values_file: Path | None) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(_values(values_file))


# ---------------------------------------------------------------------------------------------------------
# Triton: one GPU per pod, the whole pipeline, probes for slow loads, connection age for balancing.


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=VALUES_IDS)
def test_triton_pod(values_file: Path | None) -> None:
    docs = manifests(values_file)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = the(docs, "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    triton = container(deployment, "triton")
    args = triton["args"]
    assert triton["command"] == ["tritonserver"]
    assert flag(args, "--model-control-mode") == ["explicit"]
    assert flag(args, "--load-model"), "explicit model control loads nothing without --load-model"
    assert flag(args, "--strict-readiness") == ["true"]
    assert flag(args, "--allow-metrics") == ["true"] and flag(args, "--metrics-port") == ["8002"]
    age_ms = int(flag(args, "--grpc-max-connection-age")[0])
    grace_ms = int(flag(args, "--grpc-max-connection-age-grace")[0])
    assert 10_000 <= age_ms <= 600_000, "new replicas must receive traffic within minutes"
    # A connection closing for age must let the gateway's longest request finish.
    gateway_timeout_s = float(env(container(the(docs, "Deployment", "gateway"), "gateway"))["HYBRID_REQUEST_TIMEOUT_S"])
    assert grace_ms >= gateway_timeout_s * 1000
    exit_timeout_s = int(flag(args, "--exit-timeout-secs")[0])
    assert pod["terminationGracePeriodSeconds"] > exit_timeout_s >= gateway_timeout_s

    # One GPU, requested as a limit (extended resources have no overcommit).
    assert triton["resources"]["limits"][values["triton"]["gpuResource"]] == 1

    # /dev/shm: a memory emptyDir with a size, mounted where the Python backend looks.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory" and quantity_bytes(shm["sizeLimit"]) >= 2**30

    # The repository, read-only, is the one Triton serves.
    repository = flag(args, "--model-repository")[0]
    assert mounts[repository]["readOnly"] is True

    # Probes: ready/live endpoints; the startup probe leaves at least 10 minutes for loads and compiles.
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert triton["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"

    # The compile caches live on the cache volume when it is enabled.
    variables = env(triton)
    if any(v["name"] == "compile-cache" for v in pod["volumes"]):
        cache = next(m["mountPath"] for m in triton["volumeMounts"] if m["name"] == "compile-cache")
        assert variables["TORCHINDUCTOR_CACHE_DIR"].startswith(cache + "/")
    assert variables["HF_HUB_OFFLINE"] == "1"


def test_export_init_container_writes_what_triton_serves() -> None:
    docs = manifests(CHART / "ci" / "export-init-values.yaml")
    deployment = the(docs, "Deployment", "triton")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    triton = container(deployment, "triton")
    assert init["command"] == ["python3", "-m", "export"]
    out = init["args"][init["args"].index("--out") + 1]
    assert out == flag(triton["args"], "--model-repository")[0]
    init_mount = next(m for m in init["volumeMounts"] if m["mountPath"] == out)
    triton_mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == out)
    assert init_mount["name"] == triton_mount["name"] and init_mount["readOnly"] is False
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1  # engines are built on the GPU that runs them
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == init_mount["name"])
    assert "emptyDir" in volume
    assert env(init)["HYBRID_PROFILE_OVERRIDES"] == env(triton)["HYBRID_PROFILE_OVERRIDES"]
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def test_model_repository_claim() -> None:
    (claim,) = [d for d in manifests() if d["kind"] == "PersistentVolumeClaim"]
    volumes = the(manifests(), "Deployment", "triton")["spec"]["template"]["spec"]["volumes"]
    models = next(v for v in volumes if v["name"] == "models")["persistentVolumeClaim"]
    assert models == {"claimName": claim["metadata"]["name"], "readOnly": True}
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    fixed = manifests(CHART / "ci" / "fixed-replicas-values.yaml")
    assert not [d for d in fixed if d["kind"] == "PersistentVolumeClaim"]
    volumes = the(fixed, "Deployment", "triton")["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "models")["persistentVolumeClaim"]["claimName"] == "hybrid-models"


# ---------------------------------------------------------------------------------------------------------
# The gateway balances over the headless Service.


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=VALUES_IDS)
def test_gateway_balances_over_the_headless_service(values_file: Path | None) -> None:
    docs = manifests(values_file)
    service = the(docs, "Service", "triton")
    triton_labels = the(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None", "a ClusterIP would balance connections, not requests"
    assert not service["spec"].get("publishNotReadyAddresses"), "loading replicas must stay out of DNS"
    assert selects(service["spec"]["selector"], triton_labels)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}

    gateway = the(docs, "Deployment", "gateway")
    variables = env(container(gateway, "gateway"))
    target = parse_target(variables["HYBRID_TRITON_GRPC_URL"])
    name = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert (target.scheme, target.endpoints) == ("dns", ((name, 8001),))
    assert variables["HYBRID_TRITON_GRPC_URL"].startswith("dns:///")
    assert variables["HYBRID_EMBEDDED_TRITON"] == "false"
    # Every variable the chart sets is one the gateway reads (a renamed setting would be ignored silently).
    assert set(variables) <= {"HYBRID_" + f.upper() for f in Settings.model_fields}
    assert variables["HYBRID_TRITON_METRICS_URL"] == f"http://{name}:8002/metrics"
    gateway_container = container(gateway, "gateway")
    assert gateway_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    front = the(docs, "Service", "gateway")
    assert selects(front["spec"]["selector"], gateway["spec"]["template"]["metadata"]["labels"])
    assert not selects(front["spec"]["selector"], triton_labels)


def test_ingress_routes_to_the_gateway() -> None:
    docs = manifests(CHART / "ci" / "export-init-values.yaml")
    ingress = the(docs, "Ingress", "gateway")
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": the(docs, "Service", "gateway")["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"secretName": "encoder-tls", "hosts": ["encoder.example.org"]}]
    assert not [d for d in manifests() if d["kind"] == "Ingress"], "the ingress is opt-in"


# ---------------------------------------------------------------------------------------------------------
# Autoscaling: HPA -> adapter metric -> recorded series -> scraped pods.


def _adapter_rule() -> dict[str, Any]:
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return rule


def _recorded() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}


def test_hpa_scales_triton_on_the_adapter_metric() -> None:
    docs = manifests()
    hpa = the(docs, "HorizontalPodAutoscaler", "triton")
    deployment = the(docs, "Deployment", "triton")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"], "helm upgrade would reset the HPA's replica count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rule = _adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    # The adapter serves the per-pod recording, labelled so that it maps onto pods in their namespace.
    series = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", rule["seriesQuery"]).group(0)
    assert series == RATIO and series in _recorded()
    assert re.fullmatch(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "avg" not in rule["metricsQuery"], "averaging over series is the trap of server issue #8979"
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300, "a replica takes minutes to come back"
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] < behavior["scaleDown"]["stabilizationWindowSeconds"]

    gateway_hpa = the(docs, "HorizontalPodAutoscaler", "gateway")
    (cpu,) = gateway_hpa["spec"]["metrics"]
    assert cpu["type"] == "Resource" and cpu["resource"]["name"] == "cpu"

    fixed = manifests(CHART / "ci" / "fixed-replicas-values.yaml")
    assert not [d for d in fixed if d["kind"] == "HorizontalPodAutoscaler"]
    assert the(fixed, "Deployment", "triton")["spec"]["replicas"] == 2


def test_monitoring_selects_the_pods_and_carries_the_rules() -> None:
    docs = manifests()
    labels = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["labels"]
    triton = the(docs, "Deployment", "triton")
    pod_monitor = the(docs, "PodMonitor", "triton")
    assert selects(pod_monitor["spec"]["selector"]["matchLabels"], triton["spec"]["template"]["metadata"]["labels"])
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in container(triton, "triton")["ports"]}
    service_monitor = the(docs, "ServiceMonitor", "gateway")
    gateway_service = the(docs, "Service", "gateway")
    assert selects(service_monitor["spec"]["selector"]["matchLabels"], gateway_service["metadata"]["labels"])
    assert {e["port"] for e in service_monitor["spec"]["endpoints"]} <= {
        p["name"] for p in gateway_service["spec"]["ports"]
    }
    rule = the(docs, "PrometheusRule", "triton")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    for monitor in (pod_monitor, service_monitor, rule):
        assert labels.items() <= monitor["metadata"]["labels"].items(), "kube-prometheus-stack selects by release"
    fixed = manifests(CHART / "ci" / "fixed-replicas-values.yaml")
    assert not [d for d in fixed if d["apiVersion"].startswith("monitoring.coreos.com/")]


def test_disruption_budgets_cover_each_component() -> None:
    docs = manifests()
    for component in ("triton", "gateway"):
        pdb = the(docs, "PodDisruptionBudget", component)
        pod_labels = the(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert the(docs, "PodDisruptionBudget", "triton")["spec"]["maxUnavailable"] == 1


def test_names_fit_dns_labels_for_long_releases() -> None:
    """Service names must be DNS-1035 labels (63 characters): the component suffixes must survive truncation."""
    with helm.Chart.load(CHART) as chart:
        templates = chart.render({}, name="a-rather-long-release-name-for-an-encoder-service-x", namespace=NAMESPACE)
    docs = [d for n, t in templates.items() if not n.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    names = {d["kind"]: set() for d in docs}
    for doc in docs:
        names[doc["kind"]].add(doc["metadata"]["name"])
    for name in names["Service"]:
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name), name
    assert {n.rsplit("-", 1)[1] for n in names["Service"]} == {"triton", "gateway"}


# ---------------------------------------------------------------------------------------------------------
# The recording rules under promtool.


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's `prometheus` package (make system-deps)"
    return promtool


def _run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_rules_pass_promtool_check() -> None:
    result = _run_promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass() -> None:
    result = _run_promtool("test", "rules", RULES_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ensembles_left_out_are_exactly_the_contract_s() -> None:
    """The rules' model filter names the six ensembles and none of the composing models."""
    regexes = set()
    for expr in _recorded().values():
        regexes |= set(re.findall(r'model!~"([^"]+)"', expr))
    (regex,) = regexes
    models = {p.parent.name for p in (ROOT / "model_repository").glob("*/config.pbtxt")}
    assert set(ENSEMBLES) <= models
    assert {m for m in models if re.fullmatch(regex, m)} == set(ENSEMBLES)


def _adapter_query(namespace: str, pods: list[str]) -> str:
    """The adapter's metricsQuery as prometheus-adapter expands it for an HPA asking about `pods`."""
    rule = _adapter_rule()
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", RATIO)
        .replace("<<.LabelMatchers>>", f'namespace="{namespace}",pod=~"{"|".join(pods)}"')
        .replace("<<.GroupBy>>", "pod")
    )


def test_the_hpa_metric_is_each_pod_s_ratio(tmp_path: Path) -> None:
    """The adapter's query over the recorded series, on the same inputs as the rules' unit test: the HPA sees
    0.6 for the pod with several loaded models and traffic on two, 0 for the idle pod."""
    spec = yaml.safe_load(RULES_TEST.read_text())
    spec["rule_files"] = [str(RULES)]
    for case in spec["tests"]:
        case["promql_expr_test"] = [
            {
                "expr": _adapter_query("serving", ["triton-a", "triton-b"]),
                "eval_time": "3m",
                "exp_samples": [
                    {"labels": '{pod="triton-a"}', "value": 0.6},
                    {"labels": '{pod="triton-b"}', "value": 0},
                ],
            },
            {"expr": _adapter_query("other", ["triton-a"]), "eval_time": "3m", "exp_samples": []},
        ]
    test_file = tmp_path / "adapter.test.yml"
    test_file.write_text(yaml.safe_dump(spec))
    result = _run_promtool("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_averaging_trap_fails_the_unit_test(tmp_path: Path) -> None:
    """An average of per-model ratios (as in Triton's k8s-onprem adapter query, server issue #8979) reports a
    fraction of the pod's queue when idle models are loaded: the same unit test must fail on it."""
    naive = yaml.safe_load(RULES.read_text())
    for rule in naive["groups"][0]["rules"]:
        if rule.get("record") == RATIO:
            rule["expr"] = (
                "avg by (namespace, pod) (rate(nv_inference_queue_duration_us[1m])"
                " / clamp_min(rate(nv_inference_compute_infer_duration_us[1m]), 1))"
            )
    (tmp_path / "naive.rules.yml").write_text(yaml.safe_dump(naive))
    spec = yaml.safe_load(RULES_TEST.read_text())
    spec["rule_files"] = ["naive.rules.yml"]
    (tmp_path / "naive.test.yml").write_text(yaml.safe_dump(spec))
    result = _run_promtool("test", "rules", tmp_path / "naive.test.yml")
    assert result.returncode != 0
    assert RATIO in result.stdout + result.stderr
