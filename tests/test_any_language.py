"""Easel from outside Python, against the four real services with a token: a Node.js client
that loads `protos/` as they are, and `buf curl` that learns every API through server
reflection (which, like every call but health checks, needs the token)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from easel.downloader.v1 import download_service_pb2
from easel.inference.v1 import (
    generation_service_pb2,
    generation_service_pb2_grpc,
    model_cache_service_pb2,
    tensor_store_service_pb2,
)
from easel.invoker.v1 import (
    image_service_pb2,
    invocation_service_pb2,
    queue_service_pb2,
    session_service_pb2,
)
from easel.model_manager.v1 import model_install_service_pb2, model_record_service_pb2
from tests.conftest import SUITE_TOKEN
from tests.processes import (
    REPO,
    SERVICE_MODULES,
    ServiceProcess,
    start_service,
    suite_env,
    wait_serving,
)

BUF = REPO / "node_modules" / ".bin" / "buf"
NODE_CLIENT = REPO / "tests" / "any_language" / "client.mjs"
TIMEOUT_S = 60
BEARER = f"authorization: Bearer {SUITE_TOKEN}"
# Every server also serves health checks and reflection.
COMMON = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
API_MODULES = (
    download_service_pb2,
    model_install_service_pb2,
    model_record_service_pb2,
    generation_service_pb2,
    model_cache_service_pb2,
    tensor_store_service_pb2,
    image_service_pb2,
    invocation_service_pb2,
    queue_service_pb2,
    session_service_pb2,
)
# "package.Service/Method" of every method of every Easel service, from the protos.
METHODS = {
    service.full_name: {f"{service.full_name}/{method.name}" for method in service.methods}
    for module in API_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
}
SERVICES = {
    "downloader": {"easel.downloader.v1.DownloadService"},
    "model_manager": {
        "easel.model_manager.v1.ModelInstallService",
        "easel.model_manager.v1.ModelRecordService",
    },
    "inference": {
        "easel.inference.v1.GenerationService",
        "easel.inference.v1.ModelCacheService",
        "easel.inference.v1.TensorStoreService",
    },
    "invoker": {
        "easel.invoker.v1.ImageService",
        "easel.invoker.v1.InvocationService",
        "easel.invoker.v1.QueueService",
        "easel.invoker.v1.SessionService",
    },
}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    """The four services of one suite, started together and each SERVING."""
    folder = tmp_path_factory.mktemp("any_language")
    root = folder / "root"
    root.mkdir()
    env = suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN)
    services = {}
    try:
        for name in SERVICE_MODULES:
            services[name] = start_service(name, env, folder)
        for service in services.values():
            wait_serving(service)
        yield services
    finally:
        for service in services.values():
            service.stop()


def buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_a_node_client_calls_every_service_and_follows_a_session(suite):
    env = suite["invoker"].env
    done = subprocess.run(
        ["node", str(NODE_CLIENT)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["downloader"] == {"jobs": []}
    root = Path(env["EASEL_ROOT"])
    assert seen["model_manager"] == {"model_count": "0", "models_dir": str(root / "models")}
    with suite["inference"].sync_channel() as channel:
        stub = generation_service_pb2_grpc.GenerationServiceStub(channel)
        reply = stub.ListSchedulers(generation_service_pb2.ListSchedulersRequest())
    assert seen["inference"]["schedulers"] == [scheduler.name for scheduler in reply.schedulers]
    assert {"add", "mul", "txt2img", "upscale"} <= set(seen["invoker"]["types"])

    session = seen["session"]
    assert session["status"] == "SESSION_STATUS_IDLE"
    assert session["events"] == [
        {"payload": "snapshot", "node_id": ""},
        {"payload": "session_queued", "node_id": ""},
        {"payload": "session_started", "node_id": ""},
        {"payload": "invocation_started", "node_id": "sum"},
        {"payload": "invocation_complete", "node_id": "sum", "outputs": {"value": 5}},
        {"payload": "invocation_started", "node_id": "product"},
        {"payload": "invocation_complete", "node_id": "product", "outputs": {"value": 20}},
        {"payload": "session_complete", "node_id": ""},
    ]
    assert seen["unauthenticated"]["code"] == "UNAUTHENTICATED"
    assert "bearer token" in seen["unauthenticated"]["details"]


@pytest.mark.parametrize("name", SERVICES)
def test_buf_curl_lists_each_servers_services_and_methods_through_reflection(suite, name):
    url = f"http://{suite[name].address}"

    services = buf_curl("--list-services", "--reflect-header", BEARER, url)
    assert services.returncode == 0, services.stderr
    assert set(services.stdout.split()) == SERVICES[name] | COMMON

    methods = buf_curl("--list-methods", "--reflect-header", BEARER, url)
    assert methods.returncode == 0, methods.stderr
    listed = {method for method in methods.stdout.split() if method.startswith("easel.")}
    assert listed == set().union(*(METHODS[service] for service in SERVICES[name]))


# One method of each server with its request, and a piece of its answer (JSON) to check.
CALLS = {
    "downloader": (
        "easel.downloader.v1.DownloadService/ListDownloadJobs",
        {},
        lambda answer: answer.get("jobs", []),
        [],
    ),
    "model_manager": (
        "easel.model_manager.v1.ModelRecordService/GetStoreInfo",
        {},
        lambda answer: answer["backend"],
        "STORE_BACKEND_SQLITE",
    ),
    "inference": (
        "easel.inference.v1.GenerationService/ListSchedulers",
        {},
        lambda answer: "euler" in {scheduler["name"] for scheduler in answer["schedulers"]},
        True,
    ),
    "invoker": (
        "easel.invoker.v1.InvocationService/GetInvocationType",
        {"name": "add"},
        lambda answer: answer["invocationType"]["name"],
        "add",
    ),
}


@pytest.mark.parametrize("name", SERVICES)
def test_buf_curl_calls_a_method_of_each_server_with_the_token(suite, name):
    method, request, piece, expected = CALLS[name]
    url = f"http://{suite[name].address}/{method}"

    done = buf_curl("-H", BEARER, "--reflect-header", "*", "-d", json.dumps(request), url)

    assert done.returncode == 0, done.stderr
    assert piece(json.loads(done.stdout)) == expected


def test_reflection_and_calls_need_the_token(suite):
    address = suite["model_manager"].address

    listing = buf_curl("--list-services", f"http://{address}")
    assert listing.returncode != 0
    assert "not authenticated" in listing.stderr

    method = "easel.model_manager.v1.ModelRecordService/GetStoreInfo"
    call = buf_curl("--reflect-header", BEARER, f"http://{address}/{method}")
    assert call.returncode != 0
    assert "unauthenticated" in call.stderr

    health = buf_curl("--reflect-header", BEARER, f"http://{address}/grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
