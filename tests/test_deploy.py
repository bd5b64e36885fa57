"""deploy/: the Kubernetes manifests against the Kubernetes schemas, the Dockerfile's shape,
the compose file's services, and the gateway configurations they carry."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
ENV = {"REDIS_URL": "redis://redis:6379/0", "PYGATE_ADMIN_TOKEN": "t0ken"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def resource(kind: str) -> dict[str, Any]:
    for path in manifests():
        for doc in documents(path):
            if doc["kind"] == kind:
                return doc
    raise AssertionError(f"no {kind} in deploy/kubernetes")


@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = documents(KUBERNETES / "kustomization.yaml")[0]["resources"]
    assert sorted(listed) == [p.name for p in manifests()]
    kinds = {doc["kind"] for path in manifests() for doc in documents(path)}
    assert kinds == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget"}


def _check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pygate", "check", "-c", str(config)],
                          capture_output=True, text=True, timeout=60,
                          env={**_base_env(), **ENV})


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYGATE_")}


def test_the_configmaps_gateway_configuration_is_valid(tmp_path: Path) -> None:
    config = tmp_path / "pygate.toml"
    config.write_text(resource("ConfigMap")["data"]["pygate.toml"])
    done = _check(config)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_deployment_probes_drains_and_reloads_as_docs_deploy_md_says() -> None:
    deployment = resource("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "admin": 9901}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert "--watch" in container["args"]
    config = tomllib.loads(resource("ConfigMap")["data"]["pygate.toml"])
    assert config["admin"]["listen"].endswith(":9901")
    assert config["gateway"]["listen"].endswith(":8080")
    # preStop, then the drain, within the grace period
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(config["gateway"]["drain_timeout"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain
    assert set(container["resources"]) == {"requests", "limits"}
    # the ConfigMap mounted as a directory (a subPath mount never sees an update)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(name for name, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == resource("ConfigMap")["metadata"]["name"]
    assert "subPath" not in mounts[config_volume]
    assert f"{mounts[config_volume]['mountPath']}/pygate.toml" in container["args"]
    # Redis named by URL, and the config reads it from there
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_URL"]["value"].startswith("redis://")
    assert "${REDIS_URL}" in resource("ConfigMap")["data"]["pygate.toml"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_autoscaler_and_the_disruption_budget_name_the_deployment() -> None:
    name = resource("Deployment")["metadata"]["name"]
    labels = resource("Deployment")["spec"]["selector"]["matchLabels"]
    hpa = resource("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": name}
    assert hpa["minReplicas"] >= 2
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    assert resource("Service")["spec"]["selector"] == labels


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck_and_serve_as_entrypoint(
) -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    stages = [rest for word, rest in steps if word == "FROM"]
    assert len(stages) == 2 and " AS build" in stages[0]
    runtime = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    # the runtime stage installs the wheels that the build stage made as `make dist` does
    assert "COPY --from=build /dist" in " ".join(f"{w} {r}" for w, r in runtime)
    assert '--find-links /tmp/dist "pygate-gateway[all]"' in runs
    build_runs = " ".join(rest for word, rest in steps[:len(steps) - len(runtime)]
                          if word == "RUN")
    assert "python -m build" in build_runs and "plugins/*/" in build_runs
    (user,) = [rest for word, rest in runtime if word == "USER"]
    assert user.isdigit() and int(user) != 0
    (health,) = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert "/healthz" in health
    (entrypoint,) = [rest for word, rest in runtime if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["pygate", "serve"]
    assert {"8080", "9901"} <= set(next(r for w, r in runtime if w == "EXPOSE").split())


def test_compose_runs_nginx_before_two_nodes_redis_and_the_demo(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"nginx", "gateway-a", "gateway-b", "redis", "demo"}
    nginx_conf = (DEPLOY / "compose" / "nginx.conf").read_text()
    for node in ("gateway-a", "gateway-b"):
        assert f"server {node}:8080" in nginx_conf
        service = services[node]
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert "--watch" in service["command"]
        assert services["nginx"]["depends_on"][node]["condition"] == "service_healthy"
    # the file both nodes read: valid, and its state shared through Redis
    done = _check(DEPLOY / "compose" / "pygate.toml")
    assert done.returncode == 0, done.stdout + done.stderr
    text = (DEPLOY / "compose" / "pygate.toml").read_text()
    assert text.count('backend = "${REDIS_URL}"') == 2  # the rate limit and the cache
    # the demo runs its services on every interface, from the same image
    assert services["demo"]["entrypoint"][-2:] == ["--host", "0.0.0.0"]
    assert shlex.join(services["demo"]["entrypoint"]).startswith("python -m pygate.demo")
