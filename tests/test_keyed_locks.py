import asyncio

import pytest

from services.common.keyed_locks import KeyedLocks


async def test_holders_of_one_key_take_turns_and_other_keys_do_not_wait():
    locks = KeyedLocks[str]()
    order: list[str] = []
    first_inside = asyncio.Event()
    release_first = asyncio.Event()

    async def first():
        async with locks.hold("a"):
            order.append("first in")
            first_inside.set()
            await release_first.wait()
            order.append("first out")

    async def second():
        await first_inside.wait()
        async with locks.hold("a"):
            order.append("second in")

    async def other_key():
        await first_inside.wait()
        async with locks.hold("b"):
            order.append("other key in")
        release_first.set()

    await asyncio.gather(first(), second(), other_key())
    assert order == ["first in", "other key in", "first out", "second in"]


async def test_a_key_is_forgotten_when_its_last_holder_leaves():
    locks = KeyedLocks[str]()
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def holder():
        async with locks.hold("a"):
            inside.set()
            await leave.wait()

    task = asyncio.create_task(holder())
    await inside.wait()
    waiter = asyncio.create_task(_enter_and_leave(locks, "a"))
    await asyncio.sleep(0)
    assert len(locks) == 1
    leave.set()
    await asyncio.gather(task, waiter)
    assert len(locks) == 0


async def test_a_holder_that_raises_releases_and_forgets_the_key():
    locks = KeyedLocks[str]()
    with pytest.raises(RuntimeError):
        async with locks.hold("a"):
            raise RuntimeError("load failed")
    assert len(locks) == 0
    await asyncio.wait_for(_enter_and_leave(locks, "a"), timeout=5)


async def _enter_and_leave(locks: KeyedLocks[str], key: str) -> None:
    async with locks.hold(key):
        pass
