"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked offline.

Nothing is built or started: the manifests are checked against Kubernetes' own schemas
(kubernetes-validate ships them), and the wiring between the services (entry points,
settings, addresses, ports, volumes, probes) against the code and the README, so that a
renamed setting or a changed port breaks this test rather than a deployment.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
import tomllib
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.settings import CommonSettings
from services.downloader.settings import DownloaderSettings
from services.inference.settings import InferenceSettings
from services.invoker.settings import InvokerSettings
from services.model_manager.settings import ModelManagerSettings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"

# The oldest Kubernetes with gRPC probes enabled by default (GA in 1.27), and the newest
# schema the package has.
KUBERNETES_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
KUSTOMIZE_KINDS = {"Kustomization", "Component"}


@dataclass(frozen=True)
class Service:
    """One Easel service as a deployment sees it: what it runs, reads and calls."""

    name: str
    settings: type[CommonSettings]
    calls: tuple[str, ...]

    @property
    def address_setting(self) -> str:
        return f"{self.name}_address"

    @property
    def port(self) -> int:
        default = CommonSettings.model_fields[self.address_setting].default
        return int(default.rsplit(":", 1)[1])


SERVICES = {
    "easel-invoker": Service("invoker", InvokerSettings, ("model_manager", "inference")),
    "easel-model-manager": Service("model_manager", ModelManagerSettings, ("downloader",)),
    "easel-downloader": Service("downloader", DownloaderSettings, ()),
    "easel-inference": Service("inference", InferenceSettings, ("model_manager",)),
}
BY_NAME = {service.name: service for service in SERVICES.values()}


@dataclass(frozen=True)
class Container:
    """An Easel container of the compose file or of a Deployment: where it comes from,
    the service it runs and its EASEL_* environment with every value resolved."""

    where: str
    service: Service
    env: dict[str, str]


# --- Kubernetes ---------------------------------------------------------------------------


def kubernetes_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, document)
        for path in sorted(KUBERNETES.rglob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def kubernetes_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in kubernetes_documents() if d["kind"] not in KUSTOMIZE_KINDS]


def resources_of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for path, d in kubernetes_resources() if d["kind"] == kind]


def one_resource(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in resources_of_kind(kind) if d["metadata"]["name"] == name]
    return found


def easel_deployments() -> list[tuple[dict[str, Any], dict[str, Any], Service]]:
    """Every Deployment running an Easel service, with its container and the service."""
    found = []
    for deployment in resources_of_kind("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        found.append((deployment, container, SERVICES[container["command"][0]]))
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_manifest_matches_the_schema(version: str) -> None:
    resources = kubernetes_resources()
    assert {d["kind"] for _, d in resources} >= {
        "Deployment",
        "Service",
        "PersistentVolumeClaim",
        "Secret",
        "StatefulSet",
    }
    for path, document in resources:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path)
            pytest.fail(f"{path.relative_to(REPO)} {document['kind']}: {where}: {error.message}")


def test_the_schema_check_catches_a_misspelt_field_and_a_wrong_type() -> None:
    """What the check above stands for: these mistakes fail it."""
    deployment = one_resource("Deployment", "inference")
    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"] = (
        "grpc"
    )
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_each_kustomization_lists_exactly_the_manifests_beside_it() -> None:
    for path, kustomization in kubernetes_documents():
        if kustomization["kind"] not in KUSTOMIZE_KINDS:
            continue
        folder = path.parent
        listed = set(kustomization.get("resources", []))
        beside = {p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed == beside, path.relative_to(REPO)
        for patch in kustomization.get("patches", []):
            target = patch["target"]
            one_resource(target["kind"], target["name"])


def test_there_is_a_deployment_and_a_service_per_easel_service() -> None:
    deployments = easel_deployments()
    assert sorted(service.name for _, _, service in deployments) == sorted(BY_NAME)
    services = resources_of_kind("Service")
    for deployment, container, service in deployments:
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        (fronting,) = [s for s in services if selects(s["spec"]["selector"], labels)]
        assert fronting["metadata"]["name"] == service.name.replace("_", "-")
        headless = fronting["spec"].get("clusterIP") == "None"
        assert headless == (service.name == "inference"), fronting["metadata"]["name"]
        (port,) = fronting["spec"]["ports"]
        assert port["port"] == service.port
        (container_port,) = container["ports"]
        assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
        assert container_port["containerPort"] == service.port
    replicas = {service.name: d["spec"]["replicas"] for d, _, service in deployments}
    assert replicas == {"invoker": 2, "model_manager": 1, "downloader": 1, "inference": 2}


def test_probes_are_grpc_health_checks_on_the_service_port_and_resources_are_requested() -> None:
    for deployment, container, service in easel_deployments():
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": service.port}, (service.name, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_models_are_shared_and_read_only_to_inference_workers() -> None:
    models = one_resource("PersistentVolumeClaim", "models")
    assert models["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = {d["metadata"]["name"] for d in resources_of_kind("PersistentVolumeClaim")}
    mounts = {}
    for deployment, container, service in easel_deployments():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        for mount in container.get("volumeMounts", []):
            if "persistentVolumeClaim" not in volumes[mount["name"]]:
                continue  # a pod's own scratch folder
            claim = volumes[mount["name"]]["persistentVolumeClaim"]
            assert claim["claimName"] in claims
            if claim["claimName"] == "models":
                read_only = mount.get("readOnly", False)
                assert read_only == claim.get("readOnly", False)
                mounts[service.name] = (mount["mountPath"], read_only)
    # Records name model files by their path, so every process sees them at the same one.
    assert mounts == {
        "inference": ("/easel/models", True),
        "model_manager": ("/easel/models", False),
        "downloader": ("/easel/models", False),
    }


def kubernetes_containers() -> list[Container]:
    (secret,) = resources_of_kind("Secret")
    containers = []
    for deployment, container, service in easel_deployments():
        env = {}
        for variable in container["env"]:
            if "valueFrom" in variable:
                reference = variable["valueFrom"]["secretKeyRef"]
                assert reference["name"] == secret["metadata"]["name"]
                env[variable["name"]] = secret["stringData"][reference["key"]]
            else:
                env[variable["name"]] = variable["value"]
        containers.append(Container(f"kubernetes {deployment['metadata']['name']}", service, env))
    return containers


def kubernetes_targets() -> dict[str, tuple[str, int]]:
    """Service name -> (Easel service it fronts, its port)."""
    labels = {
        s.name: d["spec"]["template"]["metadata"]["labels"] for d, _, s in easel_deployments()
    }
    targets = {}
    for fronting in resources_of_kind("Service"):
        for name, pod_labels in labels.items():
            if selects(fronting["spec"]["selector"], pod_labels):
                targets[fronting["metadata"]["name"]] = (name, fronting["spec"]["ports"][0]["port"])
    return targets


# --- compose ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolated(value: Any) -> str:
    """A compose value with each `${VARIABLE...}` replaced by a stand-in."""
    return re.sub(r"\$\{[^}]*\}", "stand-in", str(value))


def easel_compose_services() -> dict[str, tuple[dict[str, Any], Service]]:
    return {
        name: (spec, SERVICES[spec["command"][0]])
        for name, spec in compose()["services"].items()
        if name != "postgres"
    }


def compose_containers() -> list[Container]:
    return [
        Container(
            f"compose {name}",
            service,
            {key: interpolated(value) for key, value in spec["environment"].items()},
        )
        for name, (spec, service) in easel_compose_services().items()
    ]


def compose_targets() -> dict[str, tuple[str, int]]:
    return {
        name: (service.name, service.port)
        for name, (spec, service) in easel_compose_services().items()
    }


def test_compose_starts_postgres_and_the_services_from_the_repository_image() -> None:
    services = easel_compose_services()
    images = set()
    for spec, _ in services.values():
        build = spec["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE
        images.add(spec["image"])
    assert len(images) == 1
    assert compose()["services"]["postgres"]["image"].startswith("postgres:")
    counts: dict[str, int] = {}
    for spec, service in services.values():
        replicas = spec.get("deploy", {}).get("replicas", 1)
        counts[service.name] = counts.get(service.name, 0) + replicas
    assert counts == {"invoker": 2, "model_manager": 1, "downloader": 1, "inference": 2}


def test_compose_healthchecks_probe_each_service_port_and_ports_match() -> None:
    published = []
    for name, (spec, service) in easel_compose_services().items():
        assert spec["healthcheck"]["test"] == ["CMD", "easel-health", f"127.0.0.1:{service.port}"]
        for port in spec.get("ports", []):
            host, host_port, container_port = port.rsplit(":", 2)
            assert (host, int(container_port)) == ("127.0.0.1", service.port), name
            published.append(int(host_port))
        for dependency in spec.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy"
    assert len(published) == len(set(published))


def test_compose_shares_models_read_only_to_inference_workers() -> None:
    mounts = {}
    for name, (spec, service) in easel_compose_services().items():
        for volume in spec.get("volumes", []):
            source, target, *mode = volume.split(":")
            assert source in compose()["volumes"], name
            if source == "models":
                mounts[service.name] = (target, mode == ["ro"])
    assert mounts == {
        "inference": ("/easel/models", True),
        "model_manager": ("/easel/models", False),
        "downloader": ("/easel/models", False),
    }


# --- both ---------------------------------------------------------------------------------


def readme_settings() -> set[str]:
    """The setting names in the README's settings table."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index("| setting | default | meaning |")
    names = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`(\w+)`", line.split("|")[1]))
    return names


@pytest.mark.parametrize(
    ("containers", "targets"),
    [(compose_containers, compose_targets), (kubernetes_containers, kubernetes_targets)],
    ids=["compose", "kubernetes"],
)
def test_each_service_gets_real_settings_and_the_addresses_of_what_it_calls(
    containers, targets, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    documented = readme_settings()
    reachable = targets()
    for container in containers():
        service, env = container.service, container.env
        for variable in env:
            name = variable.removeprefix("EASEL_").lower()
            assert name in service.settings.model_fields, (container.where, variable)
            assert name in documented, (container.where, variable, "not in the README")
        # The values are valid for the service: its settings class reads them.
        for variable in list(os.environ):
            if variable.startswith("EASEL_"):
                monkeypatch.delenv(variable)
        monkeypatch.setenv("EASEL_ROOT", str(tmp_path))
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = service.settings()
        assert settings.auth_token is not None, container.where
        assert settings.database_url.startswith("postgresql://") == (service.name != "inference"), (
            container.where
        )
        assert getattr(settings, service.address_setting) == f"0.0.0.0:{service.port}"
        for callee in service.calls:
            address = getattr(settings, BY_NAME[callee].address_setting)
            host, port = address.removeprefix("dns:///").rsplit(":", 1)
            assert reachable[host] == (callee, int(port)), (container.where, address)
    # The invokers find every inference worker through one DNS name, balanced by gRPC.
    invokers = [c for c in containers() if c.service.name == "invoker"]
    assert {c.env["EASEL_INFERENCE_ADDRESS"] for c in invokers} == {"dns:///inference:50054"}


def test_every_entry_point_deploy_names_is_a_console_script_of_the_project() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    named = set(re.findall(r"\beasel-[a-z-]+", DOCKERFILE.read_text()))
    for spec, _ in easel_compose_services().values():
        named.add(spec["command"][0])
        named.add(spec["healthcheck"]["test"][1])
    named.update(container["command"][0] for _, container, _ in easel_deployments())
    assert named >= {*SERVICES, "easel-health"}
    for command in named:
        module, function = scripts[command].split(":")
        source = REPO / Path(*module.split(".")).with_suffix(".py")
        assert f"\ndef {function}(" in source.read_text(), command


def test_the_image_pins_the_project_torch_and_generates_the_stubs_as_make_does() -> None:
    dockerfile = DOCKERFILE.read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (torch,) = [r for r in project["optional-dependencies"]["inference"] if r.startswith("torch")]
    assert torch in dockerfile
    outputs = re.compile(r"--(\w+_out)=")
    makefile = (REPO / "Makefile").read_text()
    assert set(outputs.findall(dockerfile)) == set(outputs.findall(makefile)) != set()
    assert "-I protos" in dockerfile
    assert "touch {}/__init__.py" in dockerfile


# --- the health probe the containers run ---------------------------------------------------


@pytest.fixture
def health_server() -> Any:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def probe(address: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.common.health_probe", address, "--timeout", "10"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_health_probe_passes_only_a_serving_server(health_server) -> None:
    servicer, address = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe(address).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    failed = probe(address)
    assert failed.returncode == 1
    assert f"{address} is NOT_SERVING" in failed.stderr


def test_health_probe_fails_when_nothing_answers() -> None:
    with socket.socket() as bound:  # bound, never listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        failed = probe(f"127.0.0.1:{bound.getsockname()[1]}")
    assert failed.returncode == 1
    assert "UNAVAILABLE" in failed.stderr
