"""Each of the four servers as its own process: health, reflection, UNIMPLEMENTED for
RPCs a later release implements, a clean stop on SIGTERM, and no torch outside inference."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from clients.sdk import EaselClient
from easel.inference.v1 import generation_service_pb2
from easel.invoker.v1 import session_service_pb2
from services.common import errors
from services.common.settings import CommonSettings
from tests.processes import REPO, wait_serving

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
NOT_IMPLEMENTED_YET = ["inference", "invoker"]


def unimplemented_call(client: EaselClient, name: str):
    """One RPC of the service `name` that a later release implements."""
    if name == "inference":
        return client.generation.GetGeneration(generation_service_pb2.GetGenerationRequest(id="g"))
    return client.sessions.GetSession(session_service_pb2.GetSessionRequest(session_id="s"))


def settings_for(env: dict[str, str]) -> CommonSettings:
    return CommonSettings(
        root=Path(env["EASEL_ROOT"]),
        **{
            f"{name}_address": env[f"EASEL_{name.upper()}_ADDRESS"]
            for name in ("invoker", "model_manager", "downloader", "inference")
        },
    )


@pytest.mark.parametrize("name", list(SERVICES))
def test_server_serves_its_api_and_stops_on_sigterm(name, run_service, easel_env):
    service = run_service(name)
    wait_serving(service)

    with grpc.insecure_channel(service.address) as channel:
        reflected = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert set(SERVICES[name]) <= set(reflected)
    assert "grpc.health.v1.Health" in reflected

    if name in NOT_IMPLEMENTED_YET:
        with (
            EaselClient(settings_for(easel_env)) as client,
            pytest.raises(errors.UnimplementedError, match="not implement it yet") as caught,
        ):
            unimplemented_call(client, name)
        assert caught.value.reason == "NOT_IMPLEMENTED_YET"

    stopping = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=10) == 0
    assert time.monotonic() - stopping < 2 + 1  # the grace period (2 s in tests) and a margin
    assert '"event": "stopped"' in service.log()


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


def test_buf_curl_reaches_a_server_through_reflection(run_service):
    buf = REPO / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.skip("buf is installed by `make lint` (part of `make test`)")
    service = run_service("downloader")
    wait_serving(service)
    url = f"http://{service.address}"
    curl = [str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge"]
    listed = subprocess.run([*curl, "--list-services", url], capture_output=True, text=True)
    assert "easel.downloader.v1.DownloadService" in listed.stdout, listed.stderr
    health = subprocess.run(
        [*curl, f"{url}/grpc.health.v1.Health/Check"], capture_output=True, text=True
    )
    assert '"status": "SERVING"' in health.stdout, health.stderr
