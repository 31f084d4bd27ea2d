"""The SSRF guard: downloads reach public addresses only, unless a network is allowed.

A remote caller names the URL, so without this guard it could make the downloader fetch
from services reachable only from inside (cloud metadata endpoints, admin ports on
loopback). Names are checked at resolution time, inside the connector, so the address
that was checked is the address connected to (no DNS rebinding between check and use);
IP literals, which aiohttp never resolves, are checked before each request.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPNetwork = IPv4Network | IPv6Network


class AddressNotAllowedError(Exception):
    """The host resolves only to addresses downloads may not reach."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, which downloads may not reach")
        self.host = host
        self.address = address


class AddressGuard:
    """Decides which IP addresses downloads may connect to."""

    def __init__(self, allowed_networks: Sequence[IPNetwork]) -> None:
        self._allowed_networks = tuple(allowed_networks)

    def allows(self, address: IPv4Address | IPv6Address) -> bool:
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self._allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    def check_literal(self, host: str) -> None:
        """Refuse `host` if it is an IP literal downloads may not reach; names pass here."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        if not self.allows(address):
            raise AddressNotAllowedError(host, str(address))


class GuardedResolver(AbstractResolver):
    """A resolver that drops the addresses the guard refuses, failing if none is left."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        allowed = [r for r in results if self._guard.allows(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise AddressNotAllowedError(host, results[0]["host"] if results else "nothing")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()
