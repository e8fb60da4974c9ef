"""`actors.api.node.BarrierBatch`: concurrent strong reads share one barrier call, a read only
joins a call that has not started, one call at a time, failures shared at once."""

from __future__ import annotations

import asyncio

import pytest

from actors.api.errors import Unavailable
from actors.api.node import BarrierBatch, FakeNodeClient


async def turns(n: int = 3) -> None:
    """Let the loop run `n` iterations (callbacks scheduled with call_soon run)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Gated:
    """A barrier call that waits for the test to open its gate (or fail it)."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Future[None]] = []
        self.timeouts: list[float] = []

    async def __call__(self, timeout: float) -> None:
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        self.timeouts.append(timeout)
        await gate


def test_a_barrier_is_shared_only_by_reads_that_arrived_before_it_started() -> None:
    """One call at a time per node: reads that arrive while a call is under way wait for
    the next one, which starts when it ends (never joining the call under way)."""
    call = Gated()
    batch = BarrierBatch(call)

    async def main() -> None:
        a, b = batch.join(1.0), batch.join(2.0)
        assert a is b and not call.gates  # the call starts on the next loop iteration
        await turns(2)  # the batch closes (call_soon), then its call task runs
        assert len(call.gates) == 1 and call.timeouts == [1.0]  # the opener's timeout
        c = batch.join(3.0)  # too late for the call under way: the next one
        await turns()
        d = batch.join(4.0)  # still the next call
        await turns()
        assert c is d and c is not a and len(call.gates) == 1 and batch.in_flight
        call.gates[0].set_result(None)
        await turns()
        assert a.result() is None and not c.done()
        assert len(call.gates) == 2 and not batch.pending  # c, d share the 2nd call
        call.gates[1].set_result(None)
        await turns()
        assert c.result() is None
        assert not batch.pending and not batch.in_flight
        assert (batch.joins, batch.calls) == (4, 2)

    asyncio.run(main())


def test_reads_queued_behind_a_failed_barrier_get_its_answer_at_once() -> None:
    """Each read is answered within about read_timeout of its arrival: the reads queued
    behind a call that failed share its failure rather than waiting for another call."""
    call = Gated()
    batch = BarrierBatch(call)

    async def main() -> None:
        a = batch.join(1.0)
        await turns(2)  # the batch closes (call_soon), then its call task runs
        b = batch.join(1.0)
        await turns()
        call.gates[0].set_exception(TimeoutError())
        await turns()
        assert isinstance(a.exception(), TimeoutError)
        assert isinstance(b.exception(), TimeoutError)
        assert len(call.gates) == 1 and not batch.pending and not batch.in_flight
        # the next read starts a new call
        c = batch.join(1.0)
        await turns()
        assert len(call.gates) == 2 and not c.done()
        call.gates[1].set_result(None)
        await turns()
        assert c.result() is None

    asyncio.run(main())


def test_a_cancelled_call_answers_unavailable_not_cancelled() -> None:
    call = Gated()
    batch = BarrierBatch(call)

    async def main() -> None:
        a = batch.join(1.0)
        await turns(2)  # the batch closes (call_soon), then its call task runs
        call.gates[0].cancel()  # the call task ends cancelled
        await turns()
        assert isinstance(a.exception(), Unavailable)
        assert not batch.in_flight

    asyncio.run(main())


@pytest.mark.parametrize("n", [1, 2, 17])
def test_the_fake_node_client_batches_its_barriers(n: int) -> None:
    """`FakeNodeClient.read_barriers` counts calls after batching: N reads of one loop
    iteration are one call; a failure reaches all of them."""
    node = FakeNodeClient()

    async def main() -> None:
        results = await asyncio.gather(*(node.read_barrier(1.0) for _ in range(n)))
        assert results == [None] * n and node.read_barriers == 1
        node.fail_reads = "no leader"
        failed = await asyncio.gather(*(node.read_barrier(1.0) for _ in range(n)),
                                      return_exceptions=True)
        assert all(isinstance(e, Unavailable) for e in failed) and node.read_barriers == 1
        assert node.barriers.calls == 2 and node.barriers.joins == 2 * n

    asyncio.run(main())
