"""Optional bearer-token authentication and TLS, as a remote caller meets them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.sdk import EaselClient
from easel.downloader.v1 import download_service_pb2, download_service_pb2_grpc
from services.common import errors
from services.common.settings import CommonSettings
from tests.processes import client_settings, wait_serving

TOKEN = "test-token-1234"


def get_job(channel: grpc.Channel, metadata=()):
    stub = download_service_pb2_grpc.DownloadServiceStub(channel)
    return stub.GetDownloadJob(
        download_service_pb2.GetDownloadJobRequest(id=1), metadata=metadata, timeout=5
    )


def test_token_is_required_except_for_health(run_service, easel_env):
    service = run_service("downloader", env={**easel_env, "EASEL_AUTH_TOKEN": TOKEN})
    wait_serving(service)
    with grpc.insecure_channel(service.address) as channel:
        with pytest.raises(grpc.RpcError) as missing:
            get_job(channel)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED

        with pytest.raises(grpc.RpcError) as wrong:
            get_job(channel, metadata=[("authorization", "Bearer nope")])
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

        with pytest.raises(grpc.RpcError) as allowed:
            get_job(channel, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert allowed.value.code() == grpc.StatusCode.NOT_FOUND

        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    settings = CommonSettings(downloader_address=service.address, auth_token=TOKEN)
    with EaselClient(settings) as client, pytest.raises(errors.NotFoundError):
        client.downloads.GetDownloadJob(download_service_pb2.GetDownloadJobRequest(id=1))
    without = CommonSettings(downloader_address=service.address)
    with EaselClient(without) as client, pytest.raises(errors.UnauthenticatedError) as caught:
        client.downloads.GetDownloadJob(download_service_pb2.GetDownloadJobRequest(id=1))
    assert caught.value.reason == "MISSING_TOKEN"
    assert TOKEN not in service.log()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_serves_only_tls_clients(run_service, easel_env, certificate):
    cert, key = certificate
    env = {**easel_env, "EASEL_TLS_CERT_FILE": str(cert), "EASEL_TLS_KEY_FILE": str(key)}
    service = run_service("downloader", env=env)

    wait_serving(service, credentials=grpc.ssl_channel_credentials(cert.read_bytes()))

    settings = client_settings(easel_env).model_copy(update={"tls_ca_file": cert})
    with EaselClient(settings) as client, pytest.raises(errors.NotFoundError):
        client.downloads.GetDownloadJob(download_service_pb2.GetDownloadJobRequest(id=1))

    with grpc.insecure_channel(service.address) as channel, pytest.raises(grpc.RpcError) as plain:
        get_job(channel)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_suites_processes_require_a_token(run_service, easel_env):
    """Every test suite runs with a token, so calls between services are authenticated."""
    service = run_service("downloader")
    wait_serving(service)
    without = client_settings(easel_env).model_copy(update={"auth_token": None})
    with EaselClient(without) as client, pytest.raises(errors.UnauthenticatedError):
        client.downloads.ListDownloadJobs(download_service_pb2.ListDownloadJobsRequest())
    with EaselClient(client_settings(easel_env)) as client:
        client.downloads.ListDownloadJobs(download_service_pb2.ListDownloadJobsRequest())
