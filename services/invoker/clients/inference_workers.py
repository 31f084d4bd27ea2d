"""The inference workers behind `inference_address`, as the invoker reaches them.

`inference_address` names one worker (`host:port`), a comma-separated list of IP
addresses (`127.0.0.1:50054,127.0.0.1:50064`) or one DNS name that resolves to every
worker (`dns:///inference:50054`). Two kinds of channel come from it:

- the balanced channel: one gRPC target for all of them (a list becomes gRPC's own
  `ipv4:`/`ipv6:` target), with gRPC's `round_robin` over the workers whose
  grpc.health.v1 says SERVING, and a call answered UNAVAILABLE before any response
  retried on another worker (nothing was created then);
- a channel per worker, for work that must reach one worker in particular (the one that
  holds a tensor). The invoker finds the workers itself: the list's entries, or the
  addresses the DNS name resolves to now.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc import aio

_LIST_SCHEMES = ("ipv4:", "ipv6:")
_OTHER_SCHEMES = ("unix:", "unix-abstract:", "vsock:")
_DEFAULT_PORT = "443"  # gRPC's own, for a DNS name without one

SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {
                "name": [{"service": "easel.inference.v1.GenerationService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
"""Round robin over the healthy workers; gRPC retries only calls that got no response
yet, so a retried RunGeneration never created its generation before."""


def check_inference_address(address: str) -> str:
    """`address` when it is a usable target; a list must hold IP addresses of one family
    (gRPC resolves no list of names: one DNS name covers several workers)."""
    entries = _list_entries(address)
    if entries is None:
        return address
    families = set()
    for entry in entries:
        host, _port = _split_host_port(entry)
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(
                f"{entry!r}: a list of inference addresses takes IP addresses "
                "(e.g. 127.0.0.1:50054,127.0.0.1:50064); for host names use one DNS name "
                "that resolves to every worker, e.g. dns:///inference:50054"
            ) from None
    if len(families) > 1:
        raise ValueError("a list of inference addresses takes IPv4 or IPv6 addresses, not both")
    return address


def balanced_target(address: str) -> str:
    """The gRPC target of every worker at once."""
    entries = _list_entries(address)
    if entries is None or address.startswith(_LIST_SCHEMES):
        return address
    host, _port = _split_host_port(entries[0])
    scheme = "ipv6:" if ipaddress.ip_address(host).version == 6 else "ipv4:"
    return scheme + ",".join(entries)


@dataclass(frozen=True)
class Worker:
    """One inference worker: its own gRPC target, and the name its TLS certificate
    carries when that target is an address resolved from a DNS name."""

    target: str
    tls_name: str | None = None


async def resolve_workers(address: str) -> list[Worker]:
    """The workers `address` names now (a DNS name is resolved at each call)."""
    entries = _list_entries(address)
    if entries is not None:
        return [Worker(entry) for entry in entries]
    if address.startswith(_OTHER_SCHEMES):
        return [Worker(address)]
    name = address.removeprefix("dns:")
    if name.startswith("//"):  # dns://authority/host:port
        name = name[2:].split("/", 1)[1]
    host, port = _split_host_port(name)
    try:
        ipaddress.ip_address(host)
        return [Worker(address)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    targets = dict.fromkeys(_join(info[4][0], port) for info in found)
    return [Worker(target, host) for target in targets]


class WorkerChannels:
    """A channel per worker, opened on first use and kept; build it inside the event loop."""

    def __init__(self, open_worker: Callable[[Worker], aio.Channel]) -> None:
        self._open = open_worker
        self._channels: dict[str, aio.Channel] = {}

    def get(self, worker: Worker) -> aio.Channel:
        channel = self._channels.get(worker.target)
        if channel is None:
            channel = self._channels[worker.target] = self._open(worker)
        return channel

    def looks_down(self, worker: Worker) -> bool:
        """Whether the last attempt to reach the worker failed (its channel is in
        TRANSIENT_FAILURE); a worker never called is not."""
        channel = self._channels.get(worker.target)
        if channel is None:
            return False
        return channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _list_entries(address: str) -> list[str] | None:
    """The entries of a list of addresses, or None when `address` is not one."""
    if address.startswith(_LIST_SCHEMES):
        return [entry.strip() for entry in address[len("ipv4:") :].split(",")]
    if "," in address:
        return [entry.strip() for entry in address.split(",")]
    return None


def _split_host_port(entry: str) -> tuple[str, str]:
    if entry.startswith("["):  # [v6]:port
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":") or _DEFAULT_PORT
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, port
    return entry, _DEFAULT_PORT  # a bare IPv6 address or a name without a port


def _join(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
