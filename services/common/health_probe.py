"""`easel-health ADDRESS`: exit 0 when the server at ADDRESS reports SERVING.

A container healthcheck (Docker, compose) runs it inside the service's own container, as
Kubernetes' native gRPC probes do from outside: one grpc.health.v1 Check over plaintext
and no token, since Easel's servers answer health checks without one. It imports only
grpcio and the health stubs, so a check every few seconds costs little.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The serving status `address` reports for `service` ("" is the whole server), or
    the gRPC status code's name when the check itself fails (UNAVAILABLE, ...)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="easel-health",
        description="Exit 0 when the gRPC server at ADDRESS reports SERVING (grpc.health.v1), "
        "1 otherwise.",
    )
    parser.add_argument("address", metavar="ADDRESS", help="host:port of the server")
    parser.add_argument(
        "--service", default="", help="service name to check; the whole server when omitted"
    )
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    status = check(args.address, args.service, args.timeout)
    if status != "SERVING":
        print(f"easel-health: {args.address} is {status}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
