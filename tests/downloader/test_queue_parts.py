"""The downloader's building blocks, tested directly: slots, names, the address guard,
HuggingFace file URLs."""

from __future__ import annotations

import asyncio
import re
from ipaddress import ip_address, ip_network

import pytest

from services.downloader.address_guard import AddressGuard, AddressNotAllowedError, numeric_ipv4
from services.downloader.file_names import (
    is_plain_name,
    is_safe_relative_path,
    sanitise_remote_name,
)
from services.downloader.job_requests import hub_file_url
from services.downloader.transfer_slots import TransferSlots


async def test_slots_never_exceed_the_limit_and_go_to_the_lowest_priority():
    slots = TransferSlots(limit=2)
    order: list[str] = []
    peak = 0
    release = asyncio.Event()

    async def transfer(name: str, priority: int, job_id: int) -> None:
        nonlocal peak
        async with slots.slot(priority, job_id):
            peak = max(peak, slots.in_use)
            order.append(name)
            await release.wait()

    running = [asyncio.create_task(transfer(f"first{i}", 10, i)) for i in range(2)]
    await asyncio.sleep(0)
    waiting = [
        asyncio.create_task(transfer(name, priority, job_id))
        for name, priority, job_id in [("late", 30, 3), ("urgent", 1, 9), ("mid", 20, 4)]
    ]
    await asyncio.sleep(0.01)
    assert order == ["first0", "first1"]
    release.set()
    await asyncio.gather(*running, *waiting)
    assert order[2:] == ["urgent", "mid", "late"]
    assert peak == 2
    assert slots.in_use == 0


async def test_a_cancelled_waiter_gives_up_its_turn():
    slots = TransferSlots(limit=1)
    async with slots.slot(10, 1):
        waiter = asyncio.create_task(slots.slot(5, 2).__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    assert slots.in_use == 0
    async with slots.slot(10, 3):
        assert slots.in_use == 1


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        ("model.safetensors", "model.safetensors"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Windows\\evil.dll", "evil.dll"),
        (".bashrc", "bashrc"),
        ("..", None),
        ("", None),
        (None, None),
        ("a\x00b\nc.bin", "abc.bin"),
        ("x" * 300, "x" * 255),
    ],
)
def test_remote_names_are_reduced_to_one_safe_name(remote, local):
    assert sanitise_remote_name(remote) == local


def test_caller_names_and_relative_paths():
    assert is_plain_name("vae.safetensors")
    assert not any(is_plain_name(n) for n in ("", ".", "..", "a/b", "a\\b"))
    assert is_safe_relative_path("unet/diffusion_pytorch_model.safetensors")
    assert not any(is_safe_relative_path(p) for p in ("", "/etc/passwd", "a/../../b", "..", "a\\b"))


def test_the_guard_refuses_internal_addresses_unless_allowed():
    guard = AddressGuard([])
    for internal in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1"):
        assert not guard.allows(ip_address(internal)), internal
    assert guard.allows(ip_address("93.184.216.34"))
    assert not guard.allows(ip_address("::ffff:127.0.0.1"))  # IPv4-mapped loopback
    with pytest.raises(AddressNotAllowedError):
        guard.check_literal("[::1]")
    guard.check_literal("example.com")  # names are checked when resolved

    for carrying_loopback in ("::7f00:1", "64:ff9b::7f00:1", "64:ff9b:1::7f00:1", "2002:7f00:1::"):
        assert not guard.allows(ip_address(carrying_loopback)), carrying_loopback
    assert not guard.allows(ip_address("64:ff9b::a9fe:a9fe"))  # NAT64 metadata endpoint
    assert guard.allows(ip_address("64:ff9b::5db8:d822"))  # NAT64 of a public address
    assert guard.allows(ip_address("2002:5db8:d822::1"))  # 6to4 of a public address

    loopback_allowed = AddressGuard([ip_network("127.0.0.0/8")])
    assert loopback_allowed.allows(ip_address("127.0.0.5"))
    assert not loopback_allowed.allows(ip_address("10.0.0.1"))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("10.1.513", "10.1.2.1"),
        ("0x5d.184.216.34", "93.184.216.34"),  # public, yet refused: spelled oddly
    ],
)
def test_the_guard_refuses_odd_ipv4_spellings(host, address):
    assert numeric_ipv4(host) == ip_address(address)
    with pytest.raises(AddressNotAllowedError) as refused:
        AddressGuard([ip_network("0.0.0.0/0")]).check_literal(host)
    assert (refused.value.host, refused.value.address) == (host, address)


def test_hosts_that_are_names_or_no_address():
    for name in ("example.com", "huggingface.co", "1e1", "a1", "127.0.0.1.example.com"):
        assert numeric_ipv4(name) is None, name
    for nonsense in ("1.2.3.4.5", "256.0.0.1", "1..2", "08", "4294967296", "x.1"):
        with pytest.raises(ValueError, match=re.escape(nonsense)):
            numeric_ipv4(nonsense)


@pytest.mark.parametrize(
    ("url", "file_url"),
    [
        (
            "https://huggingface.co/org/model/blob/main/unet/model.safetensors",
            "https://huggingface.co/org/model/resolve/main/unet/model.safetensors",
        ),
        ("https://hf.co/gpt2/blob/main/config.json", "https://hf.co/gpt2/resolve/main/config.json"),
        (
            "https://huggingface.co/spaces/org/app/blob/a1b2c3/app.py",
            "https://huggingface.co/spaces/org/app/resolve/a1b2c3/app.py",
        ),
        (
            "https://huggingface.co/org/model/blob/main/a%20b.bin?download=true",
            "https://huggingface.co/org/model/resolve/main/a%20b.bin?download=true",
        ),
        (  # a repo named "blob" that is already a file URL
            "https://huggingface.co/org/blob/resolve/main/f.bin",
            "https://huggingface.co/org/blob/resolve/main/f.bin",
        ),
        (
            "https://huggingface.co/org/blob/blob/main/f.bin",
            "https://huggingface.co/org/blob/resolve/main/f.bin",
        ),
        (
            "https://huggingface.co/org/model/blob/main/",
            "https://huggingface.co/org/model/blob/main/",
        ),
        ("https://huggingface.co/org/model", "https://huggingface.co/org/model"),
        (
            "https://mirror.example/org/model/blob/main/f",
            "https://mirror.example/org/model/blob/main/f",
        ),
    ],
)
def test_hub_file_pages_become_file_urls(url, file_url):
    assert hub_file_url(url) == file_url
