"""SharedReads: a fact many walks ask for at once is read once, kept until it expires, and a
failed read is everyone's failure but not remembered."""

from __future__ import annotations

import asyncio

import pytest

from engine.brokers.alpaca.cache import SharedReads


class Source:
    """A slow read that counts how often it ran and answers with that count."""

    def __init__(self, seconds_good: float = 60.0, fail_first: int = 0) -> None:
        self.reads = 0
        self.seconds_good = seconds_good
        self.fail_first = fail_first
        self.release = asyncio.Event()

    async def fetch(self) -> tuple[int, float]:
        self.reads += 1
        await self.release.wait()
        if self.reads <= self.fail_first:
            raise ConnectionError(f"read {self.reads} failed")
        return self.reads, self.seconds_good


def test_concurrent_misses_share_one_read() -> None:
    async def scenario() -> list[int]:
        cache: SharedReads[str, int] = SharedReads()
        source = Source()
        waiting = [asyncio.create_task(cache.get("clock", source.fetch)) for _ in range(20)]
        await asyncio.sleep(0)
        source.release.set()
        answers = await asyncio.gather(*waiting)
        assert await cache.get("clock", source.fetch) == 1  # kept
        assert source.reads == 1
        return answers

    assert asyncio.run(scenario()) == [1] * 20


def test_keys_are_read_separately() -> None:
    async def scenario() -> None:
        cache: SharedReads[str, int] = SharedReads()
        source = Source()
        source.release.set()
        assert await cache.get("AAPL", source.fetch) == 1
        assert await cache.get("MSFT", source.fetch) == 2
        assert await cache.get("AAPL", source.fetch) == 1

    asyncio.run(scenario())


def test_an_expired_answer_is_read_again() -> None:
    async def scenario() -> None:
        cache: SharedReads[str, int] = SharedReads()
        source = Source(seconds_good=0.0)
        source.release.set()
        assert await cache.get("clock", source.fetch) == 1
        assert await cache.get("clock", source.fetch) == 2

    asyncio.run(scenario())


def test_a_failed_read_fails_every_waiter_and_is_not_kept() -> None:
    async def scenario() -> None:
        cache: SharedReads[str, int] = SharedReads()
        source = Source(fail_first=1)
        waiting = [asyncio.create_task(cache.get("clock", source.fetch)) for _ in range(3)]
        await asyncio.sleep(0)
        source.release.set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert [str(o) for o in outcomes] == ["read 1 failed"] * 3
        assert await cache.get("clock", source.fetch) == 2
        assert source.reads == 2

    asyncio.run(scenario())


def test_a_cancelled_caller_does_not_cancel_the_shared_read() -> None:
    async def scenario() -> None:
        cache: SharedReads[str, int] = SharedReads()
        source = Source()
        first = asyncio.create_task(cache.get("clock", source.fetch))
        second = asyncio.create_task(cache.get("clock", source.fetch))
        await asyncio.sleep(0)
        first.cancel()
        source.release.set()
        assert await second == 1
        with pytest.raises(asyncio.CancelledError):
            await first
        assert source.reads == 1

    asyncio.run(scenario())


def test_a_read_left_pending_by_an_earlier_event_loop_is_started_again() -> None:
    cache: SharedReads[str, int] = SharedReads()
    stuck, answering = Source(), Source()
    earlier_loop = asyncio.new_event_loop()
    try:
        # the earlier loop stops with its read still pending (a later asyncio.run can
        # never await that read)
        waiting = earlier_loop.create_task(cache.get("clock", stuck.fetch))
        earlier_loop.run_until_complete(asyncio.sleep(0))
        assert not waiting.done()

        async def later() -> int:
            answering.release.set()
            return await cache.get("clock", answering.fetch)

        assert asyncio.run(later()) == 1
        assert (stuck.reads, answering.reads) == (1, 1)
    finally:
        pending = asyncio.all_tasks(earlier_loop)
        for task in pending:
            task.cancel()
        earlier_loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        earlier_loop.close()
