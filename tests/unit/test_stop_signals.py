"""`prisn.server.StopSignals`: SIGTERM/SIGINT handling that never blocks in the handler."""

from __future__ import annotations

import os
import signal
import threading

from actors.supervisor import Supervisor
from prisn.server import StopSignals


def test_the_handler_takes_no_lock_the_waiting_main_thread_may_hold() -> None:
    """`Event.wait` holds the Event's condition lock for a few bytecodes each turn; a signal
    handler runs in that same thread between bytecodes. A handler that calls `Event.set()`
    then blocks on that lock forever (companion below); ours only records the signal."""
    sup = Supervisor()
    sig = StopSignals()
    with sup.stop_requested._cond:  # what the main thread holds inside Event.wait
        ours = threading.Thread(target=sig.on_signal, args=(signal.SIGTERM, None))
        ours.start()
        ours.join(10)
        assert not ours.is_alive(), "the handler blocked on the stop Event's lock"
        companion = threading.Thread(target=sup.stop_requested.set)  # the old handler's call
        companion.start()
        companion.join(0.2)
        assert companion.is_alive(), "Event.set() should block while its lock is held"
    companion.join(10)
    assert sig.received == [signal.SIGTERM]
    assert sig.wait(sup, 0.0) is True


def test_a_real_sigterm_ends_the_wait_and_an_actor_failure_does_too() -> None:
    sup = Supervisor()
    sig = StopSignals()
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    old_fd = signal.set_wakeup_fd(-1)
    try:
        sig.install()
        assert sig.wait(sup, 0.0) is False
        os.kill(os.getpid(), signal.SIGTERM)
        assert sig.wait(sup, 10.0) is True
        assert sig.received == [signal.SIGTERM]
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    other = StopSignals()
    sup.stop_requested.set()  # what the supervisor does when an actor fails
    assert other.wait(sup, 10.0) is True and other.received == []
