"""Each of the four servers as its own process: health, reflection, UNIMPLEMENTED for
RPCs a later release implements, a clean stop on SIGTERM, one server per address, and no
torch outside inference."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from clients.sdk import EaselClient
from easel.downloader.v1 import download_service_pb2
from easel.invoker.v1 import image_service_pb2, invocation_service_pb2, session_service_pb2
from easel.model_manager.v1 import model_record_service_pb2
from tests.processes import REPO, client_settings, wait_serving

SERVICES = {
    "downloader": ["easel.downloader.v1.DownloadService"],
    "model_manager": [
        "easel.model_manager.v1.ModelRecordService",
        "easel.model_manager.v1.ModelInstallService",
    ],
    "inference": [
        "easel.inference.v1.ModelCacheService",
        "easel.inference.v1.GenerationService",
        "easel.inference.v1.TensorStoreService",
    ],
    "invoker": [
        "easel.invoker.v1.InvocationService",
        "easel.invoker.v1.SessionService",
        "easel.invoker.v1.QueueService",
        "easel.invoker.v1.ImageService",
    ],
}
TORCH_FREE = ["downloader", "model_manager", "invoker"]


@pytest.mark.parametrize("name", list(SERVICES))
def test_server_serves_its_api_and_stops_on_sigterm(name, run_service, easel_env):
    service = run_service(name)
    wait_serving(service)

    with service.sync_channel() as channel:
        reflected = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert set(SERVICES[name]) <= set(reflected)
    assert "grpc.health.v1.Health" in reflected

    if name == "invoker":
        with EaselClient(client_settings(easel_env)) as client:
            request = invocation_service_pb2.ListInvocationTypesRequest()
            assert client.invocations.ListInvocationTypes(request).invocation_types
            assert (
                list(client.images.ListImages(image_service_pb2.ListImagesRequest()).images) == []
            )
            sessions = client.sessions.ListSessions(session_service_pb2.ListSessionsRequest())
            assert list(sessions.sessions) == []

    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=30) == 0
    assert '"event": "stopped"' in service.log()


@pytest.mark.parametrize("name", ["downloader", "model_manager"])
def test_a_second_server_on_a_busy_address_exits_with_one_clear_line(name, run_service, easel_env):
    first = run_service(name)
    wait_serving(first)

    second = run_service(name, env=dict(easel_env))
    assert second.process.wait(timeout=60) == 1
    log = second.log()
    assert f"cannot listen on {first.address}: the address is in use" in log
    assert "Traceback" not in log
    assert '"event": "listening"' not in log

    wait_serving(first)
    with EaselClient(client_settings(easel_env)) as client:
        if name == "downloader":
            request = download_service_pb2.ListDownloadJobsRequest()
            assert list(client.downloads.ListDownloadJobs(request).jobs) == []
        else:
            request = model_record_service_pb2.GetStoreInfoRequest()
            assert client.model_records.GetStoreInfo(request).model_count == 0


@pytest.mark.parametrize("name", TORCH_FREE)
def test_torch_free_services_never_load_torch(name, run_service):
    service = run_service(name)
    wait_serving(service)
    mapped = Path(f"/proc/{service.process.pid}/maps").read_text()
    assert "libtorch" not in mapped

    probe = f"import sys, services.{name}.main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)


def test_inference_loads_torch_before_serving(run_service):
    service = run_service("inference")
    wait_serving(service)
    assert "libtorch" in Path(f"/proc/{service.process.pid}/maps").read_text()
    assert '"event": "torch ready"' in service.log()


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="needs a machine without CUDA")
def test_inference_that_cannot_get_ready_exits_without_serving(run_service, easel_env):
    service = run_service("inference", env={**easel_env, "EASEL_DEVICE": "cuda"})
    assert service.process.wait(timeout=60) == 1
    assert "no CUDA device is available" in service.log()


def test_flags_override_the_environment(run_service, easel_env):
    service = run_service("downloader", args=["--log-level", "debug"])
    wait_serving(service)
    assert '"level": "debug"' in service.log()


def test_buf_curl_reaches_a_server_through_reflection(run_service, easel_env):
    buf = REPO / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.skip("buf is installed by `make lint` (part of `make test`)")
    service = run_service("downloader")
    wait_serving(service)
    url = f"http://{service.address}"
    token = f"Authorization: Bearer {easel_env['EASEL_AUTH_TOKEN']}"
    curl = [str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    curl += ["-H", token, "--reflect-header", token]
    listed = subprocess.run([*curl, "--list-services", url], capture_output=True, text=True)
    assert "easel.downloader.v1.DownloadService" in listed.stdout, listed.stderr
    health = subprocess.run(
        [*curl, f"{url}/grpc.health.v1.Health/Check"], capture_output=True, text=True
    )
    assert '"status": "SERVING"' in health.stdout, health.stderr


def test_a_server_renews_each_connection_after_its_age_and_lets_calls_on_it_finish(
    run_service, easel_env
):
    """After max_connection_age_s the server asks its client to connect again (so a client
    behind a DNS name re-resolves it); a stream in flight runs on meanwhile."""
    service = run_service("downloader", env={**easel_env, "EASEL_MAX_CONNECTION_AGE_S": "0.5"})
    wait_serving(service)
    states: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
    with grpc.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        channel.subscribe(states.put)
        while states.get(timeout=30) != grpc.ChannelConnectivity.READY:
            pass
        while states.get(timeout=30) == grpc.ChannelConnectivity.READY:
            pass  # left READY: the server sent GOAWAY once the connection had its age
        assert not watch.done()
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=30)  # a new connection
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert not watch.done()
        watch.cancel()
