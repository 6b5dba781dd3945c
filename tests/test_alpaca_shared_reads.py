"""SharedReads: a fact many walks ask for at once is read once, kept until it expires, and a
failed read is everyone's failure but not remembered. FreshReads: callers asking at once
share one read, but no caller is ever answered by a read sent before it asked (a walk
validating its fills must see the position after them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest

from engine.brokers.alpaca.cache import SharedReads
from engine.brokers.alpaca.fresh import FreshReads


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
    with earlier_loop() as loop:
        # the earlier loop stops with its read still pending (a later asyncio.run can
        # never await that read)
        waiting = loop.create_task(cache.get("clock", stuck.fetch))
        loop.run_until_complete(asyncio.sleep(0))
        assert not waiting.done()

        async def later() -> int:
            answering.release.set()
            return await cache.get("clock", answering.fetch)

        assert asyncio.run(later()) == 1
        assert (stuck.reads, answering.reads) == (1, 1)


@contextmanager
def earlier_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop left with its tasks pending (as a later `asyncio.run` finds one), its
    tasks cancelled and the loop closed afterwards."""
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


# -- FreshReads: shared, but never answered by a read sent before the caller asked --------


class KeyedSource:
    """A read per call that waits to be let go, answering each key with the read's number."""

    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[frozenset[str]] = []
        self.fail_first = fail_first
        self.release = asyncio.Event()

    async def fetch(self, keys: frozenset[str]) -> Mapping[str, int]:
        self.sent.append(keys)
        number = len(self.sent)
        await self.release.wait()
        if number <= self.fail_first:
            raise ConnectionError(f"read {number} failed")
        return dict.fromkeys(keys, number)

    async def until_sent(self, reads: int) -> None:
        while len(self.sent) < reads:
            await asyncio.sleep(0)


def test_callers_asking_before_a_read_leaves_share_it_with_all_their_keys() -> None:
    async def scenario() -> list[Mapping[str, int]]:
        source = KeyedSource()
        reads = FreshReads(source.fetch)
        asking = [asyncio.create_task(reads.get([s])) for s in ("AAPL", "MSFT", "AAPL")]
        await source.until_sent(1)
        source.release.set()
        answers = await asyncio.gather(*asking)
        assert source.sent == [frozenset({"AAPL", "MSFT"})]
        return answers

    assert asyncio.run(scenario()) == [{"AAPL": 1, "MSFT": 1}] * 3


def test_a_caller_arriving_while_a_read_is_in_flight_gets_the_next_one() -> None:
    """The read in flight left before the late callers asked: they share the next read,
    which leaves only once the first has answered (one read in flight at a time)."""

    async def scenario() -> None:
        source = KeyedSource()
        reads = FreshReads(source.fetch)
        early = asyncio.create_task(reads.get(["AAPL"]))
        await source.until_sent(1)
        late = [asyncio.create_task(reads.get([s])) for s in ("AAPL", "TSLA")]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(source.sent) == 1  # the next read waits for the one in flight
        source.release.set()
        assert await early == {"AAPL": 1}
        assert await asyncio.gather(*late) == [{"AAPL": 2, "TSLA": 2}] * 2
        assert source.sent == [frozenset({"AAPL"}), frozenset({"AAPL", "TSLA"})]
        # asked after both answered: a third read, never one of the earlier answers
        assert await reads.get(["AAPL"]) == {"AAPL": 3}

    asyncio.run(scenario())


def test_a_spaced_read_waits_for_more_callers_and_leaves_after_all_asked() -> None:
    """With a spacing, the first read leaves at once; a read right after it is held for the
    spacing, and callers asking one after another meanwhile all share it (validations of
    walks settling a moment apart: one `GET /v2/positions`)."""

    async def scenario() -> None:
        source = KeyedSource()
        source.release.set()
        reads = FreshReads(source.fetch, spacing_seconds=0.3)
        assert await reads.get(["AAPL"]) == {"AAPL": 1}
        first = asyncio.create_task(reads.get(["MSFT"]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(source.sent) == 1  # held: the spacing is not over
        second = asyncio.create_task(reads.get(["TSLA"]))
        assert await asyncio.gather(first, second) == [{"MSFT": 2, "TSLA": 2}] * 2
        assert source.sent[1] == frozenset({"MSFT", "TSLA"})

    asyncio.run(scenario())


def test_a_burst_of_spaced_reads_leaves_at_once_then_they_are_held() -> None:
    """A lone order's reads (its plan's, its before and after) are never held; a fourth in
    a row waits for the allowance to refill."""

    async def scenario() -> None:
        source = KeyedSource()
        source.release.set()
        reads = FreshReads(source.fetch, spacing_seconds=0.3, burst=3)
        for number in (1, 2, 3, 4):
            asking = asyncio.create_task(reads.get(["AAPL"]))
            for _ in range(5):
                await asyncio.sleep(0)
            assert len(source.sent) == min(number, 3)  # the fourth is held
            assert await asking == {"AAPL": number}

    asyncio.run(scenario())


def test_a_failed_fresh_read_fails_each_of_its_callers_only() -> None:
    async def scenario() -> None:
        source = KeyedSource(fail_first=1)
        reads = FreshReads(source.fetch)
        failing = [asyncio.create_task(reads.get(["AAPL"])) for _ in range(2)]
        await source.until_sent(1)
        late = asyncio.create_task(reads.get(["AAPL"]))
        source.release.set()
        outcomes = await asyncio.gather(*failing, return_exceptions=True)
        assert [str(o) for o in outcomes] == ["read 1 failed"] * 2
        assert await late == {"AAPL": 2}

    asyncio.run(scenario())


def test_a_cancelled_caller_does_not_cancel_the_fresh_read() -> None:
    async def scenario() -> None:
        source = KeyedSource()
        reads = FreshReads(source.fetch)
        first = asyncio.create_task(reads.get(["AAPL"]))
        second = asyncio.create_task(reads.get(["AAPL"]))
        await source.until_sent(1)
        first.cancel()
        source.release.set()
        assert await second == {"AAPL": 1}
        with pytest.raises(asyncio.CancelledError):
            await first
        assert len(source.sent) == 1

    asyncio.run(scenario())


def test_fresh_reads_never_wait_for_a_read_an_earlier_event_loop_left_pending() -> None:
    stuck, answering = KeyedSource(), KeyedSource()

    async def fetch(keys: frozenset[str]) -> Mapping[str, int]:
        return await (answering if stuck.sent else stuck).fetch(keys)

    reads = FreshReads(fetch)
    with earlier_loop() as loop:
        waiting = loop.create_task(reads.get(["AAPL"]))
        loop.run_until_complete(stuck.until_sent(1))
        assert not waiting.done()

        async def later() -> Mapping[str, int]:
            answering.release.set()
            return await reads.get(["AAPL"])

        assert asyncio.run(later()) == {"AAPL": 1}
