"""The Kustomize overlays render, pass the Kubernetes schemas and the project's policies."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    ROOT,
    Obj,
    containers,
    find,
    one,
    pod_template,
    render,
    selects,
    tool,
    workloads,
)
from tokenservice_server.config import load_settings

# Kinds without a schema in kubernetes-validate (CRDs), with the fields they must have.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("selector", "podMetricsEndpoints"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("groups",),
}
SCHEMA_VERSIONS = ("1.30.0", "1.37.0")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay: str) -> None:
    objects = render(overlay)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "CronJob", "Job", "Service", "ConfigMap"} <= kinds
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert len(namespaces) == 1, namespaces
    assert None not in namespaces


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_pass_strict_schema_validation(overlay: str, version: str, tmp_path: Path) -> None:
    builtin: list[Obj] = []
    for obj in render(overlay):
        required = CUSTOM_KINDS.get((obj["apiVersion"], obj["kind"]))
        if required is None:
            builtin.append(obj)
        else:
            assert set(required) <= set(obj["spec"]), f"{obj['kind']} lacks {required}"
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_and_bounded(overlay: str) -> None:
    problems = []
    for workload in workloads(render(overlay)):
        spec = pod_template(workload)["spec"]
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        pod_security = spec.get("securityContext", {})
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: pod seccompProfile is not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: service account token mounted")
        for container in containers(spec):
            where = f"{name}/{container['name']}"
            security = container.get("securityContext", {})
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                problems.append(f"{where}: may run as root")
            if security.get("runAsUser", pod_security.get("runAsUser")) in (None, 0):
                problems.append(f"{where}: no numeric non-root runAsUser")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem writable")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not dropped")
            if security.get("privileged"):
                problems.append(f"{where}: privileged")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(bound, {})):
                    problems.append(f"{where}: no cpu/memory {bound}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_containers_have_probes(overlay: str) -> None:
    """Servers need probes; run-to-completion Jobs and init containers do not."""
    problems = []
    for workload in render(overlay):
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in containers(pod_template(workload)["spec"], init=False):
            missing = {"startupProbe", "readinessProbe", "livenessProbe"} - set(container)
            if missing:
                problems.append(f"{workload['metadata']['name']}/{container['name']}: {missing}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_uses_native_grpc_probes(overlay: str) -> None:
    deployment = one(render(overlay), "Deployment", "tokenservice")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    grpc_port = next(p["containerPort"] for p in server["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == grpc_port, probe
    # Readiness follows Redis (the overall status); liveness must not, or a Redis outage
    # would restart every pod (the server serves a "liveness" health name for this).
    assert "service" not in server["readinessProbe"]["grpc"]
    assert server["livenessProbe"]["grpc"]["service"] == "liveness"
    assert server["startupProbe"]["grpc"]["service"] == "liveness"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    for workload in workloads(render(overlay)):
        for container in containers(pod_template(workload)["spec"]):
            image = container["image"]
            name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
            assert "/" in image, f"{image}: unqualified image (not replaced by kustomize?)"
            assert name, image
            assert tag, f"{image}: not pinned by tag or digest"
            assert tag != "latest", image
            assert container.get("imagePullPolicy") != "Always" or "@" in image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_selected_by_a_network_policy(overlay: str) -> None:
    objects = render(overlay)
    policies = find(objects, "NetworkPolicy")
    default_deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert default_deny, "no default-deny NetworkPolicy"
    specific = [p for p in policies if p["spec"]["podSelector"]]
    for workload in workloads(objects):
        labels = pod_template(workload)["metadata"]["labels"]
        matching = [
            p["metadata"]["name"] for p in specific if selects(p["spec"]["podSelector"], labels)
        ]
        assert matching, f"{workload['kind']}/{workload['metadata']['name']}: no NetworkPolicy"


def test_network_policies_allow_only_the_intended_paths() -> None:
    policies = {
        p["metadata"]["name"]: p["spec"] for p in find(render("production"), "NetworkPolicy")
    }
    server = policies["tokenservice"]
    grpc_rule = next(
        r for r in server["ingress"] if {"protocol": "TCP", "port": 50051} in r["ports"]
    )
    assert all(
        peer.get("podSelector", peer.get("namespaceSelector"))
        == {"matchLabels": {"tokenservice.io/client": "true"}}
        for peer in grpc_rule["from"]
    )
    data = policies["redis-data"]
    sources = [peer["podSelector"]["matchLabels"] for peer in data["ingress"][0]["from"]]
    assert sources == [
        {"app.kubernetes.io/name": "tokenservice"},
        {"app.kubernetes.io/name": "redis"},
    ]
    assert {"protocol": "TCP", "port": 9121} in data["ingress"][1]["ports"]
    assert "ingress" not in policies["tokenservice-jobs"]  # jobs serve nothing


def test_production_has_a_pdb_for_every_deployment_and_statefulset() -> None:
    objects = render("production")
    pdbs = find(objects, "PodDisruptionBudget")
    for workload in objects:
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [p for p in pdbs if selects(p["spec"]["selector"], labels)]
        assert len(covering) == 1, f"{workload['metadata']['name']}: {len(covering)} PDBs"


def _redis_config(objects: list[Obj]) -> dict[str, str]:
    return one(objects, "ConfigMap", "redis-config")["data"]


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_sentinel_topology_and_quorum(overlay: str) -> None:
    objects = render(overlay)
    sentinels = one(objects, "StatefulSet", "redis-sentinel")["spec"]["replicas"]
    data_nodes = one(objects, "StatefulSet", "redis")["spec"]["replicas"]
    config = _redis_config(objects)
    (monitor,) = [
        v for v in _directives(config["sentinel.conf"])["sentinel"] if v.startswith("monitor ")
    ]
    quorum = int(monitor.split()[-1])
    assert sentinels % 2 == 1
    assert sentinels >= 3
    assert sentinels // 2 < quorum <= sentinels, (sentinels, quorum)
    assert data_nodes >= 3  # 1 master + 2 replicas
    redis_conf = _directives(config["redis.conf"])
    assert int(redis_conf["min-replicas-to-write"][0]) >= 1
    assert redis_conf["appendonly"] == ["yes"]
    claim = one(objects, "StatefulSet", "redis")["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_never_evicts_and_stays_below_its_memory_limit(overlay: str) -> None:
    objects = render(overlay)
    config = _redis_config(objects)
    assert _directives(config["redis.conf"])["maxmemory-policy"] == ["noeviction"]
    maxmemory = _directives(config["memory.conf"])["maxmemory"][0]
    assert maxmemory.endswith("mb")
    redis = one(objects, "StatefulSet", "redis")
    server = next(
        c for c in redis["spec"]["template"]["spec"]["containers"] if c["name"] == "redis"
    )
    limit = server["resources"]["limits"]["memory"]
    limit_mb = (
        int(limit.removesuffix("Gi")) * 1024
        if limit.endswith("Gi")
        else int(limit.removesuffix("Mi"))
    )
    assert int(maxmemory.removesuffix("mb")) <= 0.8 * limit_mb, (maxmemory, limit)


def test_production_redis_uses_tls_everywhere_and_hard_anti_affinity() -> None:
    objects = render("production")
    config = _redis_config(objects)
    for key in ("tls.conf", "sentinel-tls.conf"):
        tls = _directives(config[key])
        assert tls["port"] == ["0"]
        assert tls["tls-replication"] == ["yes"]
        assert tls["tls-auth-clients"] == ["yes"]
    env = one(objects, "ConfigMap", "tokenservice-env")["data"]
    assert env["TOKENSERVICE_REDIS__TLS__ENABLED"] == "true"
    for name in ("redis", "redis-sentinel"):
        affinity = one(objects, "StatefulSet", name)["spec"]["template"]["spec"]["affinity"]
        assert affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]


def test_production_autoscaling_and_spread() -> None:
    objects = render("production")
    (hpa,) = find(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tokenservice"
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["spec"]["metrics"]
    }
    assert targets == {"cpu": 70, "memory": 80}
    assert hpa["spec"]["minReplicas"] >= 3
    spec = one(objects, "Deployment", "tokenservice")["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def _settings_for(
    objects: list[Obj], tmp_path: Path, container: Obj, monkeypatch: pytest.MonkeyPatch
):  # type: ignore[no-untyped-def]
    """Load the service's settings exactly as the container would (secrets faked)."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(one(objects, "ConfigMap", "tokenservice-config")["data"]["config.yaml"])
    for source in container.get("envFrom", []):
        data = one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
        for key, value in data.items():
            monkeypatch.setenv(key, value)
    for variable in container.get("env", []):
        value = variable.get("value")
        if value is None:
            assert set(variable["valueFrom"]) == {"secretKeyRef"}, variable
            value = "s" * 40
        monkeypatch.setenv(variable["name"], value)
    monkeypatch.delenv("TOKENSERVICE_CONFIG", raising=False)
    return load_settings(config_file)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_configuration_is_valid_for_the_service(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every TOKENSERVICE_* variable and config key is one the service accepts."""
    objects = render(overlay)
    for workload in workloads(objects):
        for container in containers(pod_template(workload)["spec"]):
            if "/tokenservice:" not in container["image"]:
                continue
            with monkeypatch.context() as patch:
                settings = _settings_for(objects, tmp_path, container, patch)
            assert settings.redis.topology.value == (
                "standalone" if overlay == "dev" else "sentinel"
            )
            assert settings.log_format == "json"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_only_by_reference(overlay: str) -> None:
    objects = render(overlay)
    assert not find(objects, "Secret"), "Secrets are created out of band, never rendered"
    for workload in workloads(objects):
        for container in containers(pod_template(workload)["spec"]):
            for variable in container.get("env", []):
                if re.search(r"PASSWORD|PEPPER|SECRET(?!_FILE)", variable["name"]):
                    assert "secretKeyRef" in variable.get("valueFrom", {}), variable["name"]
    # Redis passwords reach the configs only through the init scripts' variables.
    literal_password = re.compile(
        r"(requirepass|masterauth|auth-pass \S+|sentinel-pass)\s+(?!\\?\"?\$)\S"
    )
    for config_map in find(objects, "ConfigMap"):
        for key, text in config_map["data"].items():
            assert not literal_password.search(text), f"{config_map['metadata']['name']}: {key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(overlay)
    deployment = one(objects, "Deployment", "tokenservice")
    spec = deployment["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    settings = _settings_for(objects, tmp_path, server, monkeypatch)
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 1
    # The drain must finish before the kubelet's SIGKILL, with a margin for shutdown.
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + settings.shutdown_grace + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_are_bounded_and_never_overlap(overlay: str) -> None:
    objects = render(overlay)
    crons = {c["metadata"]["name"]: c["spec"] for c in find(objects, "CronJob")}
    assert crons["tokenservice-cleanup-tokens"]["schedule"] == "*/5 * * * *"
    assert crons["tokenservice-cleanup-cache"]["schedule"] == "*/10 * * * *"
    commands = {
        name: spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].get("args", [])[:2]
        for name, spec in crons.items()
    }
    assert commands["tokenservice-cleanup-tokens"] == ["cleanup", "tokens"]
    assert commands["tokenservice-cleanup-cache"] == ["cleanup", "cache"]
    for name, spec in crons.items():
        assert spec["concurrencyPolicy"] == "Forbid", name
        assert spec["startingDeadlineSeconds"] > 0, name
        assert 0 < spec["successfulJobsHistoryLimit"] <= 5
        assert 0 < spec["failedJobsHistoryLimit"] <= 5
        job = spec["jobTemplate"]["spec"]
        assert job["activeDeadlineSeconds"] > 0, name
        assert job["backoffLimit"] <= 3, name
    backup = crons["tokenservice-backup"]["jobTemplate"]["spec"]["template"]["spec"]
    script = backup["containers"][0]["command"][-1]
    assert "exec tokenservice backup --db both" in script
    assert '--output "/backups/tokenservice-' in script
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in backup["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["tokenservice-backups"]
    assert one(objects, "PersistentVolumeClaim", "tokenservice-backups")
    (init,) = find(objects, "Job")
    assert init["spec"]["template"]["spec"]["containers"][0]["args"][0] == "init"
    assert init["spec"]["activeDeadlineSeconds"] > 0


def test_monitoring_objects_are_generated_from_deploy_monitoring() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_monitoring.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    objects = render("production")
    assert find(objects, "PrometheusRule")
    assert find(objects, "ServiceMonitor")
    redis = one(objects, "StatefulSet", "redis")
    names = [c["name"] for c in redis["spec"]["template"]["spec"]["containers"]]
    assert sorted(names) == ["exporter", "redis"]


def test_argocd_points_at_the_overlays() -> None:
    application = yaml.safe_load((DEPLOY / "argocd" / "application.yaml").read_text())
    assert (ROOT / application["spec"]["source"]["path"]).is_dir()
    appset = yaml.safe_load((DEPLOY / "argocd" / "applicationset.yaml").read_text())
    (generator,) = appset["spec"]["generators"]
    envs = [element["env"] for element in generator["list"]["elements"]]
    assert envs == list(OVERLAYS)
    template_path = appset["spec"]["template"]["spec"]["source"]["path"]
    for env in envs:
        assert (ROOT / template_path.replace("{{.env}}", env)).is_dir()


def test_job_commands_parse_with_the_real_cli() -> None:
    """The CronJobs and the init Job call commands and flags the CLI has."""
    from tokenservice_server.cli import _parser

    objects = render("production")
    invocations = []
    for workload in [*find(objects, "CronJob"), *find(objects, "Job")]:
        (container,) = pod_template(workload)["spec"]["containers"]
        if "args" in container:
            invocations.append(container["args"])
        else:
            script = container["command"][-1]
            invocations.append(shlex.split(script.split("exec tokenservice ", 1)[1]))
    assert len(invocations) == 4
    for argv in invocations:
        _parser().parse_args(argv)  # exits (SystemExit 2) on an unknown command or flag
