"""Many threads and asyncio tasks recording with different actors: no leaks."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

from auditlake import sdk
from auditlake.sdk.testing import AuditEvents

PER_WORKER = 200


def _work(user: str) -> None:
    with sdk.actor(user_id=user, tenant_id=f"tenant-{user}"):
        for i in range(PER_WORKER):
            sdk.record("read", "doc", f"{user}:{i}")


def test_threads_with_different_actors_never_leak_attribution(memory: AuditEvents) -> None:
    users = [f"u{n}" for n in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(_work, users))
    events = memory.events
    assert len(events) == len(users) * PER_WORKER
    for event in events:
        owner = event["resource_id"].split(":")[0]
        assert event["user_id"] == owner
        assert event["tenant_id"] == f"tenant-{owner}"


def test_asyncio_tasks_with_different_actors_never_leak_attribution(memory: AuditEvents) -> None:
    async def handle(user: str) -> None:
        with sdk.actor(user_id=user, tenant_id=f"tenant-{user}"):
            for i in range(50):
                await asyncio.sleep(0)
                sdk.record("read", "doc", f"{user}:{i}")

    async def main() -> None:
        await asyncio.gather(*(handle(f"a{n}") for n in range(40)))

    asyncio.run(main())
    events = memory.events
    assert len(events) == 40 * 50
    for event in events:
        owner = event["resource_id"].split(":")[0]
        assert (event["user_id"], event["tenant_id"]) == (owner, f"tenant-{owner}")


def test_tasks_created_inside_a_scope_inherit_it(memory: AuditEvents) -> None:
    async def child() -> None:
        sdk.record("read", "doc", "child")

    async def main() -> None:
        with sdk.actor(user_id="parent"):
            task = asyncio.create_task(child())
        await task

    asyncio.run(main())
    assert memory.events[0]["user_id"] == "parent"


def test_start_thread_and_copy_context_keep_the_actor_plain_thread_does_not(
    memory: AuditEvents,
) -> None:
    def emit(name: str) -> None:
        sdk.record("read", "doc", name)

    with sdk.actor(user_id="u1"):
        sdk.start_thread(emit, "helper").join()
        context = contextvars.copy_context()
        plain = threading.Thread(target=emit, args=("plain",))
        copied = threading.Thread(target=context.run, args=(emit, "copied"))
        plain.start()
        copied.start()
        plain.join()
        copied.join()
    by_name = {e["resource_id"]: e["user_id"] for e in memory.events}
    assert by_name == {"helper": "u1", "copied": "u1", "plain": ""}
