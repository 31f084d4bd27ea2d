"""The SSRF guard: downloads reach public addresses only, unless a network is allowed.

A remote caller names the URL, so without this guard it could make the downloader fetch
from services reachable only from inside (cloud metadata endpoints, admin ports on
loopback). Names are checked at resolution time, inside the connector, so the address
that was checked is the address connected to (no DNS rebinding between check and use);
IP literals, which aiohttp never resolves, are checked before each request.

An IPv4 address has other spellings that URL parsers and `inet_aton` still read
(`127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.0.0.1.`); checkers disagree about
them, which is how guards get bypassed, so a host spelled so is refused outright.
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
    """The host resolves only to addresses downloads may not reach, or is an address
    spelled in a way downloads refuse."""

    def __init__(self, host: str, address: str, message: str | None = None) -> None:
        super().__init__(message or f"{host} resolves to {address}, which downloads may not reach")
        self.host = host
        self.address = address


class AddressGuard:
    """Decides which IP addresses downloads may connect to."""

    def __init__(self, allowed_networks: Sequence[IPNetwork]) -> None:
        self._allowed_networks = tuple(allowed_networks)

    def allows(self, address: IPv4Address | IPv6Address) -> bool:
        if isinstance(address, IPv6Address):
            address = embedded_ipv4(address) or address
        if any(address in network for network in self._allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    def check_literal(self, host: str) -> None:
        """Refuse `host` if it is an IP address downloads may not reach or an IPv4 address
        not written as four decimal numbers; names pass here (checked when resolved)."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            _refuse_numeric_spelling(host)
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


# IPv6 prefixes whose addresses carry an IPv4 address in their last 32 bits: NAT64 (the
# well-known and the local-use prefix) and the deprecated IPv4-compatible form. A NAT64
# gateway or a dual stack host can route them to the IPv4 address inside.
_IPV4_IN_LAST_32_BITS = (
    IPv6Network("64:ff9b::/96"),
    IPv6Network("64:ff9b:1::/48"),
    IPv6Network("::/96"),
)


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, compatible), if any.

    Python calls most of these forms global whatever IPv4 address they carry, so the guard
    judges the IPv4 address inside instead.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.is_loopback or address.is_unspecified:  # ::1 and :: are no IPv4 address
        return None
    if any(address in prefix for prefix in _IPV4_IN_LAST_32_BITS):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def numeric_ipv4(host: str) -> IPv4Address | None:
    """The IPv4 address a host written as numbers means, None for a name.

    A host whose last label is a number (decimal, `0x` hex or `0` octal, after one
    trailing dot) is an IPv4 address to the URL standard and to `inet_aton`: up to four
    numbers, the last filling the remaining bytes. Raises ValueError when such a host
    means no address (`1.2.3.4.5`, `256.0.0.1`).
    """
    labels = host.lower().split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not _is_number(labels[-1]):
        return None
    if len(labels) > 4:
        raise ValueError(f"{host} has more than four numbers")
    numbers = [_number(label, host) for label in labels]
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host} has a number out of range")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return IPv4Address(value)


def _refuse_numeric_spelling(host: str) -> None:
    try:
        address = numeric_ipv4(host)
    except ValueError as exc:
        raise AddressNotAllowedError(host, "", f"{exc}: it is no IPv4 address") from None
    if address is not None:
        raise AddressNotAllowedError(
            host,
            str(address),
            f"{host} is a non-standard spelling of the IPv4 address {address}; "
            f"write it as {address}",
        )


_DIGITS = {16: "0123456789abcdef", 10: "0123456789", 8: "01234567"}


def _is_number(label: str) -> bool:
    if label.startswith("0x"):
        return all(ch in _DIGITS[16] for ch in label[2:])
    return label != "" and all(ch in _DIGITS[10] for ch in label)


def _number(label: str, host: str) -> int:
    if label.startswith("0x"):
        digits, base = label[2:], 16
    elif len(label) > 1 and label.startswith("0"):
        digits, base = label[1:], 8
    else:
        digits, base = label, 10
    if not label or any(ch not in _DIGITS[base] for ch in digits):
        raise ValueError(f"{host} has a label that is no number: {label!r}")
    return int(digits, base) if digits else 0
