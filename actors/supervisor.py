"""The supervisor: starts a node's actors in dependency order and stops them in reverse.

Runs on the main thread. Any actor failure sets `failed`, which ends `wait()`; the caller then
stops everything and exits non-zero so that systemd (Restart=always) starts the node again.
"""

from __future__ import annotations

import logging
import threading

from actors.base import Actor

log = logging.getLogger("prisn.supervisor")


class Supervisor:
    def __init__(self) -> None:
        self.actors: list[Actor] = []
        self.failed = threading.Event()
        self.stop_requested = threading.Event()
        self.closing = threading.Event()  # shared by every actor's outbox
        self.failure: tuple[str, BaseException] | None = None

    def on_failure(self, actor: Actor, exc: BaseException) -> None:
        """Called from the failing actor's thread."""
        if self.failure is None:
            self.failure = (actor.actor_name, exc)
        self.failed.set()
        self.stop_requested.set()

    def start(self, actor: Actor, timeout: float = 10.0) -> None:
        """Start `actor` and wait until its `on_start` ran (or it failed)."""
        self.actors.append(actor)
        actor.closing = self.closing
        actor.start()
        if not actor.started.wait(timeout):
            raise RuntimeError(f"actor {actor.actor_name} did not start within {timeout}s")
        if actor.failure is not None:
            raise RuntimeError(f"actor {actor.actor_name} failed to start: {actor.failure}")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested or an actor fails; True when stopping."""
        return self.stop_requested.wait(timeout)

    def stop_all(self, timeout: float = 5.0) -> None:
        self.closing.set()
        for actor in reversed(self.actors):
            actor.stop()
            actor.join(timeout)
            if actor.is_alive():
                log.error("actor %s did not stop within %.1fs", actor.actor_name, timeout)
