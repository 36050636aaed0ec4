"""deploy/kubernetes renders, validates, and agrees with the code it deploys.

Each overlay is rendered offline with `kubectl kustomize` (kubectl 1.32 is on
every machine of this project, CI included: STACK-NOTES), and every object is
validated against the Kubernetes 1.32 schemas with kubernetes-validate in strict
mode, where an unknown field fails. KEDA's objects are custom resources those
schemas do not cover: `keda_problems` checks what KEDA's CRDs require of them.

Then the manifests are held against the code, one source of truth: the worker
services of the topology and their queues, the OFFLOAD_* variables each
service's settings read, ports, the paths the probes ask, the shutdown grace.
A change on either side that leaves the other behind fails here.
"""

import ast
import base64
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from fastapi import FastAPI

from offload_contracts.topology import WORKER_SERVICES, work_queue
from offload_gateway.app import build_app as build_gateway
from offload_notifier.app import build_app as build_notifier
from offload_runtime.metrics import MetricsServer
from offload_sandbox.app import build_app as build_sandbox
from tests.support.settings import service_variables

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.parent.name for path in KUBERNETES.glob("overlays/*/kustomization.yaml"))
KUBERNETES_VERSION = "1.32.0"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}

HTTP_APPS: dict[str, Callable[[], FastAPI]] = {
    "gateway": build_gateway,
    "notifier": build_notifier,
    "sandbox": build_sandbox,
}
OFFLOAD_SERVICES = (*HTTP_APPS, *WORKER_SERVICES)
PUBLIC_SERVICES = ("gateway", "notifier")
STORAGE_USERS = ("gateway", "video", "image")
SECRET = "offload"
PRE_STOP_S = 5  # how long the Service-backed pods wait before SIGTERM

Object = dict[str, Any]


# --------------------------------------------------------------------------- rendering


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not on PATH: the Kubernetes manifests cannot be rendered. "
            "Install kubectl 1.32 or later, which bundles kustomize."
        )
    return found


def render(overlay: str) -> list[Object]:
    """`kubectl kustomize deploy/kubernetes/overlays/<overlay>`, as objects."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Object]]:
    assert OVERLAYS, f"no overlays under {KUBERNETES / 'overlays'}"
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def docs(rendered: dict[str, list[Object]], overlay: str) -> list[Object]:
    return rendered[overlay]


def by_kind(docs: list[Object], kind: str) -> dict[str, Object]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def container_of(workload: Object) -> Object:
    containers: list[Object] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def pod_spec(workload: Object) -> Object:
    spec: Object = workload["spec"]["template"]["spec"]
    return spec


def env_of(container: Object, docs: list[Object]) -> dict[str, str]:
    """The container's environment: literal values, ConfigMap values resolved,
    Secret values as `secret:<key>` (their values are not in the manifests)."""
    config_maps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "configMapKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["configMapKeyRef"]
            env[variable["name"]] = config_maps[ref["name"]]["data"][ref["key"]]
        else:
            env[variable["name"]] = f"secret:{variable['valueFrom']['secretKeyRef']['key']}"
    return env


def secret_refs(docs: list[Object]) -> dict[str, bool]:
    """Every key of the Secret `offload` some object reads → whether it may be absent."""
    refs: dict[str, bool] = {}
    for workload in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "StatefulSet").values()]:
        for variable in container_of(workload).get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == SECRET, (workload["metadata"]["name"], ref)
                refs[ref["key"]] = refs.get(ref["key"], True) and bool(ref.get("optional"))
    for auth in by_kind(docs, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == SECRET, (auth["metadata"]["name"], ref)
            refs[ref["key"]] = False
    return refs


def quantity(text: str | int) -> float:
    """A Kubernetes quantity (`250m`, `2`, `512Mi`, `2Gi`) as a number."""
    value = str(text)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if value.endswith(unit):
            return float(value[: -len(unit)]) * factor
    return float(value)


# --------------------------------------------------------------------------- schemas


def test_every_object_validates_against_the_kubernetes_schemas(docs: list[Object]) -> None:
    errors = []
    for doc in docs:
        if doc["kind"] in KEDA_KINDS:
            continue  # keda_problems, below
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_the_schema_validation_catches_unknown_fields_and_wrong_types(
    rendered: dict[str, list[Object]],
) -> None:
    # The check above would be worthless if the schemas accepted anything.
    gateway = by_kind(rendered[OVERLAYS[0]], "Deployment")["gateway"]
    misspelt = json.loads(json.dumps(gateway))
    container_of(misspelt)["livenesProbe"] = container_of(misspelt).pop("livenessProbe")
    mistyped = json.loads(json.dumps(gateway))
    pod_spec(mistyped)["terminationGracePeriodSeconds"] = "thirty"
    for broken in (misspelt, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# --------------------------------------------------------------------------- KEDA


def _int_at_least(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def keda_problems(docs: list[Object]) -> list[str]:
    """What KEDA would refuse in these objects, or what would not scale anything.

    From KEDA's CRDs (keda.sh/v1alpha1, config/crd/bases in kedacore/keda) and its
    RabbitMQ scaler: a ScaledObject needs `scaleTargetRef.name` and at least one
    trigger with a `type` and string `metadata`; replica counts are int32 with
    min ≤ max (max defaults to 100); a TriggerAuthentication's `secretTargetRef`
    entries need `parameter`, `name` and `key`. The HPA behaviour KEDA passes on is
    validated against the autoscaling/v2 schema.
    """
    problems: list[str] = []
    deployments = by_kind(docs, "Deployment")
    auths = by_kind(docs, "TriggerAuthentication")
    for name, auth in auths.items():
        if auth.get("apiVersion") != "keda.sh/v1alpha1":
            problems.append(f"TriggerAuthentication/{name}: apiVersion must be keda.sh/v1alpha1")
        refs = auth.get("spec", {}).get("secretTargetRef")
        if not refs:
            problems.append(f"TriggerAuthentication/{name}: no spec.secretTargetRef")
        for ref in refs or []:
            missing = {"parameter", "name", "key"} - {k for k, v in ref.items() if v}
            if missing:
                problems.append(f"TriggerAuthentication/{name}: secretTargetRef lacks {missing}")
    for name, scaled in by_kind(docs, "ScaledObject").items():
        where = f"ScaledObject/{name}"
        if scaled.get("apiVersion") != "keda.sh/v1alpha1":
            problems.append(f"{where}: apiVersion must be keda.sh/v1alpha1")
        spec = scaled.get("spec") or {}
        target = (spec.get("scaleTargetRef") or {}).get("name")
        if not target:
            problems.append(f"{where}: spec.scaleTargetRef.name is required")
        elif target not in deployments:
            problems.append(f"{where}: scales Deployment {target}, which is not deployed")
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if not (_int_at_least(low, 0) and _int_at_least(high, 1) and low <= high):
            problems.append(f"{where}: replica counts {low}..{high} (integers, 0 ≤ min ≤ max)")
        fallback = spec.get("fallback")
        if fallback is not None and not (
            _int_at_least(fallback.get("failureThreshold"), 0)
            and _int_at_least(fallback.get("replicas"), 0)
        ):
            problems.append(f"{where}: fallback needs failureThreshold and replicas")
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            hpa = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name},
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", "name": name},
                    "maxReplicas": 1,
                    "behavior": behavior,
                },
            }
            try:
                kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{where}: advanced...behavior: {exc.message}")
        triggers = spec.get("triggers")
        if not triggers:
            problems.append(f"{where}: spec.triggers needs at least one trigger")
        for trigger in triggers or []:
            metadata = trigger.get("metadata")
            if not trigger.get("type") or not isinstance(metadata, dict):
                problems.append(f"{where}: a trigger needs `type` and `metadata`")
                continue
            not_strings = [key for key, value in metadata.items() if not isinstance(value, str)]
            if not_strings:
                problems.append(f"{where}: trigger metadata must be strings: {not_strings}")
            auth_name = (trigger.get("authenticationRef") or {}).get("name")
            if auth_name is not None and auth_name not in auths:
                problems.append(f"{where}: authenticationRef {auth_name} is not deployed")
            if trigger["type"] == "rabbitmq":
                problems += rabbitmq_trigger_problems(where, metadata, auth_name, auths)
    return problems


def rabbitmq_trigger_problems(
    where: str, metadata: Object, auth: str | None, auths: dict[str, Object]
) -> list[str]:
    problems = []
    if not metadata.get("queueName"):
        problems.append(f"{where}: the rabbitmq trigger needs queueName")
    if metadata.get("mode") != "QueueLength":
        problems.append(f"{where}: mode must be QueueLength (jobs waiting or running)")
    try:
        value = float(metadata.get("value", ""))
    except ValueError:
        value = 0
    if value <= 0:
        problems.append(f"{where}: value must be a positive number, as a string")
    # Over http the management API's `messages` is ready + unacknowledged; over amqp
    # KEDA counts ready messages only and would scale busy workers to zero.
    if metadata.get("protocol") != "http":
        problems.append(f"{where}: protocol must be http, to count unacknowledged jobs")
    parameters = {
        ref.get("parameter")
        for ref in (auths.get(auth or "", {}).get("spec") or {}).get("secretTargetRef", [])
    }
    if "host" not in metadata and "host" not in parameters:
        problems.append(f"{where}: the rabbitmq trigger has no host (TriggerAuthentication)")
    if "host" in metadata:
        problems.append(f"{where}: the host holds credentials: give it by TriggerAuthentication")
    return problems


def test_keda_objects_carry_the_fields_keda_requires(docs: list[Object]) -> None:
    assert by_kind(docs, "ScaledObject"), "no ScaledObject rendered"
    assert keda_problems(docs) == []


BREAKAGES: dict[str, Callable[[Object, Object], None]] = {
    "no target": lambda scaled, auth: scaled["spec"].pop("scaleTargetRef"),
    "target not deployed": lambda scaled, auth: scaled["spec"]["scaleTargetRef"].update(
        name="videoo"
    ),
    "min above max": lambda scaled, auth: scaled["spec"].update(minReplicaCount=5),
    "no triggers": lambda scaled, auth: scaled["spec"].update(triggers=[]),
    "a number in metadata": lambda scaled, auth: scaled["spec"]["triggers"][0]["metadata"].update(
        value=16
    ),
    "amqp counts ready only": lambda scaled, auth: scaled["spec"]["triggers"][0]["metadata"].update(
        protocol="amqp"
    ),
    "no queue": lambda scaled, auth: scaled["spec"]["triggers"][0]["metadata"].pop("queueName"),
    "auth without key": lambda scaled, auth: auth["spec"]["secretTargetRef"][0].pop("key"),
    "bad scale-down policy": lambda scaled, auth: scaled["spec"].update(
        advanced={"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"policies": [{}]}}}}
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_keda_check_catches_a_broken_object(
    rendered: dict[str, list[Object]], breakage: str
) -> None:
    docs = json.loads(json.dumps(rendered[OVERLAYS[0]]))
    BREAKAGES[breakage](
        by_kind(docs, "ScaledObject")["video"],
        by_kind(docs, "TriggerAuthentication")["offload-rabbitmq"],
    )
    assert keda_problems(docs), f"{breakage}: not caught"


# --------------------------------------------------------------------------- services


def worker_problems(docs: list[Object], workers: tuple[str, ...]) -> list[str]:
    """What is missing for each worker service: its Deployment, and a ScaledObject
    on its own queue whose target per replica is the worker's concurrency."""
    problems = []
    deployments = by_kind(docs, "Deployment")
    scaled_by_target = {
        scaled["spec"]["scaleTargetRef"]["name"]: scaled
        for scaled in by_kind(docs, "ScaledObject").values()
    }
    for service in workers:
        if service not in deployments:
            problems.append(f"{service}: no Deployment")
            continue
        scaled = scaled_by_target.get(service)
        if scaled is None:
            problems.append(f"{service}: no ScaledObject scales it")
            continue
        queues = {trigger["metadata"].get("queueName") for trigger in scaled["spec"]["triggers"]}
        if queues != {work_queue(service)}:
            problems.append(f"{service}: scaled on {queues}, not on {work_queue(service)}")
        concurrency = env_of(container_of(deployments[service]), docs).get("OFFLOAD_CONCURRENCY")
        values = {trigger["metadata"].get("value") for trigger in scaled["spec"]["triggers"]}
        if values != {concurrency}:
            problems.append(
                f"{service}: target {values} per replica, concurrency {concurrency}: "
                "a replica should be asked for each OFFLOAD_CONCURRENCY jobs"
            )
    return problems


def test_every_worker_service_has_a_deployment_and_a_scaled_object_on_its_own_queue(
    docs: list[Object],
) -> None:
    assert worker_problems(docs, WORKER_SERVICES) == []
    # KEDA makes each worker's HorizontalPodAutoscaler; a second one would fight it.
    hpa_targets = {
        hpa["spec"]["scaleTargetRef"]["name"]
        for hpa in by_kind(docs, "HorizontalPodAutoscaler").values()
    }
    assert hpa_targets == set(PUBLIC_SERVICES)
    unknown = set(by_kind(docs, "Deployment")) - set(OFFLOAD_SERVICES)
    assert not unknown, f"Deployments of no Offload service: {unknown}"


def test_a_worker_service_added_to_the_topology_without_manifests_fails(
    rendered: dict[str, list[Object]],
) -> None:
    docs = rendered[OVERLAYS[0]]
    assert worker_problems(docs, (*WORKER_SERVICES, "audio")) == ["audio: no Deployment"]
    without = [
        doc
        for doc in docs
        if not (doc["kind"] == "ScaledObject" and doc["metadata"]["name"] == "video")
    ]
    assert worker_problems(without, WORKER_SERVICES) == ["video: no ScaledObject scales it"]


def test_replicas_follow_what_each_service_needs(rendered: dict[str, list[Object]]) -> None:
    # The production figures; the dev overlay lowers some to fit a small cluster.
    docs = rendered["production"]
    bounds = {
        scaled["spec"]["scaleTargetRef"]["name"]: (
            scaled["spec"]["minReplicaCount"],
            scaled["spec"]["maxReplicaCount"],
        )
        for scaled in by_kind(docs, "ScaledObject").values()
    }
    assert bounds["ai"][0] == bounds["research"][0] == 2
    assert bounds["video"] == (0, 4)  # scale to zero; up to 4 by default
    assert bounds["image"][0] == 0
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["minReplicas"] >= 2, "a second replica rides out a node's loss"
        assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    for name in (*PUBLIC_SERVICES, *WORKER_SERVICES):
        # The autoscalers own the count; a `replicas` here would reset it at each apply.
        assert "replicas" not in by_kind(docs, "Deployment")[name]["spec"], name


def test_every_offload_variable_set_is_read_by_that_service(docs: list[Object]) -> None:
    for name, deployment in by_kind(docs, "Deployment").items():
        env = env_of(container_of(deployment), docs)
        unread = {variable for variable in env if variable.startswith("OFFLOAD_")} - (
            service_variables(name)
        )
        assert not unread, f"{name} is given variables its settings do not read: {unread}"


def test_ports_hosts_and_scrape_annotations_match_the_settings(docs: list[Object]) -> None:
    services = by_kind(docs, "Service")
    for name, deployment in by_kind(docs, "Deployment").items():
        container = container_of(deployment)
        env = env_of(container, docs)
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if name in HTTP_APPS:
            prefix = f"OFFLOAD_{name.upper()}"
            assert env[f"{prefix}_HOST"] == "0.0.0.0", name
            assert ports == {"http": int(env[f"{prefix}_PORT"])}, name
            service = services[name]
            assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
            assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"], name
            metrics_port = ports["http"]
        else:
            assert env["OFFLOAD_METRICS_HOST"] == "0.0.0.0", name
            assert ports == {"metrics": int(env["OFFLOAD_METRICS_PORT"])}, name
            assert name not in services, f"{name} is a worker: nothing connects to it"
            metrics_port = ports["metrics"]
        if name != "sandbox":
            assert annotations["prometheus.io/scrape"] == "true", name
            assert annotations["prometheus.io/port"] == str(metrics_port), name
            assert annotations["prometheus.io/path"] == "/metrics", name


async def test_the_probes_ask_what_each_service_serves(docs: list[Object]) -> None:
    for name, deployment in by_kind(docs, "Deployment").items():
        container = container_of(deployment)
        probes: dict[str, Object] = {
            kind: container[kind]
            for kind in ("startupProbe", "livenessProbe", "readinessProbe")
            if kind in container
        }
        assert {"livenessProbe", "readinessProbe"} <= set(probes), name
        if name in HTTP_APPS:
            expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
            if name == "sandbox":  # no dependencies, no /readyz
                expected["readinessProbe"] = "/healthz"
            for kind, path in expected.items():
                assert probes[kind]["httpGet"]["path"] == path, (name, kind)
            transport = httpx.ASGITransport(app=HTTP_APPS[name]())
            async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
                for kind, probe in probes.items():
                    # Without its lifespan a service answers 503 on /readyz, but a
                    # path it does not serve is a 404 in any state.
                    answer = await client.get(probe["httpGet"]["path"])
                    assert answer.status_code != 404, (name, kind, probe["httpGet"]["path"])
        else:
            # Workers answer both on their metrics port (MetricsServer).
            assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            server = MetricsServer("127.0.0.1", 0, ready=lambda: True)
            server.start()
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
                    for kind, probe in probes.items():
                        answer = await client.get(probe["httpGet"]["path"])
                        assert answer.status_code == 200, (name, kind, answer.text)
            finally:
                server.stop()


def _dockerfile_uid() -> int:
    found = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert found, "the Dockerfile creates no user with --uid"
    return int(found.group(1))


def test_pods_run_non_root_on_a_read_only_root_with_requests_limits_and_a_budget(
    docs: list[Object],
) -> None:
    uid = _dockerfile_uid()
    budgets = [
        budget["spec"]["selector"]["matchLabels"]
        for budget in by_kind(docs, "PodDisruptionBudget").values()
    ]
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = pod_spec(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        container = container_of(deployment)
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        # The root is read-only: /tmp (multiprocessing's forkserver socket, any
        # library's temporary file) must be a volume of its own.
        assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}, name
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = quantity(resources["requests"][resource])
            assert 0 < request <= quantity(resources["limits"][resource]), (name, resource)
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert labels in budgets, f"{name} has no PodDisruptionBudget"
    image = container_of(by_kind(docs, "Deployment")["image"])
    pool = int(env_of(image, docs)["OFFLOAD_IMAGE_POOL_SIZE"])
    # One Pillow process per core the container may use (os.cpu_count() sees the node's).
    assert pool == quantity(image["resources"]["limits"]["cpu"])
    assert int(env_of(image, docs)["OFFLOAD_CONCURRENCY"]) == 2 * pool


def uvicorn_grace_s(service: str) -> float:
    """`graceful_shutdown_s` (of `serve_http`) in `offload_<service>/__main__.py`, a literal
    or a module constant: how long the service lets open requests run after SIGTERM."""
    path = ROOT / "services" / service / "src" / f"offload_{service}" / "__main__.py"
    tree = ast.parse(path.read_text())
    constants = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "graceful_shutdown_s":
            value = constants.get(node.value.id) if isinstance(node.value, ast.Name) else node.value
            assert isinstance(value, ast.Constant), f"{path}: not a literal or a constant"
            assert isinstance(value.value, int | float), f"{path}: not a number"
            return float(value.value)
    raise AssertionError(f"{path} sets no graceful_shutdown_s")


def test_shutdown_outlasts_the_grace_and_served_pods_drain_first(docs: list[Object]) -> None:
    services = by_kind(docs, "Service")
    for name, deployment in by_kind(docs, "Deployment").items():
        container = container_of(deployment)
        granted = pod_spec(deployment)["terminationGracePeriodSeconds"]
        pre_stop = container.get("lifecycle", {}).get("preStop")
        if name in services:
            # Taken out of the Service's endpoints, the pod keeps serving while
            # load balancers catch up; then SIGTERM.
            assert pre_stop == {"sleep": {"seconds": PRE_STOP_S}}, name
        else:
            assert pre_stop is None, f"{name}: nothing to drain; a wait only takes more jobs"
        if name in PUBLIC_SERVICES:
            grace = uvicorn_grace_s(name)
        elif name in WORKER_SERVICES:
            grace = float(env_of(container, docs)["OFFLOAD_SHUTDOWN_GRACE_S"])
        else:
            continue
        needed = grace + (PRE_STOP_S if pre_stop else 0)
        assert granted > needed, f"{name}: {granted} s before SIGKILL, needs more than {needed}"


def test_storage_is_one_read_write_many_claim_at_offload_storage_dir(docs: list[Object]) -> None:
    claims = set()
    for name, deployment in by_kind(docs, "Deployment").items():
        container = container_of(deployment)
        storage_dir = env_of(container, docs).get("OFFLOAD_STORAGE_DIR")
        volumes = {volume["name"]: volume for volume in pod_spec(deployment).get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            if mount["mountPath"] == storage_dir:
                claims.add((name, volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]))
    assert {name for name, _ in claims} == set(STORAGE_USERS)
    (claim,) = {claim for _, claim in claims}
    for name in STORAGE_USERS:
        # Without it every start walks the whole share to chown it.
        pod = pod_spec(by_kind(docs, "Deployment")[name])
        assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch", name
    assert by_kind(docs, "PersistentVolumeClaim")[claim]["spec"]["accessModes"] == ["ReadWriteMany"]


# --------------------------------------------------------------------------- network


def _selects(selector: Object, labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def admitted(docs: list[Object], labels: dict[str, str]) -> Iterator[Object]:
    """The ingress rules of every NetworkPolicy that selects a pod with `labels`."""
    for policy in by_kind(docs, "NetworkPolicy").values():
        if _selects(policy["spec"]["podSelector"], labels):
            yield from policy["spec"].get("ingress", [])


def test_only_the_gateway_and_notifier_are_reachable_and_metrics_from_monitoring(
    docs: list[Object],
) -> None:
    policies = by_kind(docs, "NetworkPolicy").values()
    assert any(
        policy["spec"]["podSelector"] == {}
        and policy["spec"]["policyTypes"] == ["Ingress"]
        and not policy["spec"].get("ingress")
        for policy in policies
    ), "no default-deny policy: pods no policy names would take anything"
    workloads = [*by_kind(docs, "Deployment").values(), *by_kind(docs, "StatefulSet").values()]
    for workload in workloads:
        name = workload["metadata"]["name"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = {port["name"] for port in container_of(workload)["ports"]}
        rules = list(admitted(docs, labels))
        for rule in rules:
            assert {port["port"] for port in rule["ports"]} <= ports, (name, rule)
            for source in rule.get("from", []):
                assert "ipBlock" not in source, (name, rule)
        from_anywhere = [rule for rule in rules if "from" not in rule]
        if name in PUBLIC_SERVICES:
            assert [rule["ports"] for rule in from_anywhere] == [[{"port": "http"}]], name
        else:
            assert not from_anywhere, f"{name} must not be reachable from outside"
        if name in WORKER_SERVICES:
            monitoring = {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
            }
            assert rules == [{"from": [monitoring], "ports": [{"port": "metrics"}]}], name


# --------------------------------------------------------------------------- overlays


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Deploying to Kubernetes")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end > 0 else None]


def test_the_readme_applies_exactly_the_overlays_this_test_renders(
    rendered: dict[str, list[Object]],
) -> None:
    section = readme_section()
    applied = set(re.findall(r"kubectl apply -k (\S+)", section))
    assert applied == {f"deploy/kubernetes/overlays/{overlay}" for overlay in rendered}
    # The objects its commands patch, pause or watch exist under those names.
    kinds = {
        "scaledobject": "ScaledObject",
        "hpa": "HorizontalPodAutoscaler",
        "deployment": "Deployment",
    }
    named = re.findall(r"\b(scaledobject|hpa|deployment)[ /]([a-z][\w-]*)", section)
    assert len(named) >= 4
    for docs in rendered.values():
        for kind, name in named:
            assert name in by_kind(docs, kinds[kind]), f"the README names {kind} {name}"


def test_production_reads_addresses_and_keys_from_the_secret_the_readme_creates(
    rendered: dict[str, list[Object]],
) -> None:
    docs = rendered["production"]
    assert not by_kind(docs, "Secret"), "production keys must not live in the repository"
    names = {doc["metadata"]["name"] for doc in docs}
    assert not names & {"rabbitmq", "redis", "sandbox"}, "production runs none of dev's servers"
    refs = secret_refs(docs)
    required = {key for key, optional in refs.items() if not optional}
    assert {
        "rabbitmq-url",
        "redis-url",
        "api-keys",
        "admin-keys",
        "rabbitmq-management-url",
    } <= required
    assert {"llm-api-key", "video-api-key"} <= set(refs)
    command = re.search(
        r"kubectl -n offload create secret generic offload(.*?)\n```", readme_section(), re.DOTALL
    )
    assert command, "the README does not show how to create the Secret"
    documented = set(re.findall(r"--from-literal=([a-z-]+)=", command.group(1)))
    assert documented == set(refs), "the README's Secret and the keys the manifests read differ"


def test_dev_runs_its_own_rabbitmq_redis_and_sandbox(rendered: dict[str, list[Object]]) -> None:
    docs = rendered["dev"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    servers = by_kind(docs, "StatefulSet")
    for server in ("rabbitmq", "redis"):
        assert container_of(servers[server])["image"] == compose[server]["image"], server
    (secret,) = by_kind(docs, "Secret").values()
    values = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    missing = {key for key, optional in secret_refs(docs).items() if not optional} - set(values)
    assert not missing, f"the dev Secret lacks {missing}"
    user, password = values["rabbitmq-user"], values["rabbitmq-password"]
    for key in ("rabbitmq-url", "rabbitmq-management-url"):
        assert f"//{user}:{password}@rabbitmq" in values[key], key
    providers = env_of(container_of(by_kind(docs, "Deployment")["ai"]), docs)
    assert providers["OFFLOAD_LLM_BASE_URL"].startswith("http://sandbox:8002/")
