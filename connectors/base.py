"""The tiny base class every sink implements.

Guarantees, stated once: ``setup()`` is called lazily, on first use, in the process that writes
(a Spark executor's Python worker); nothing connects in ``__init__``, so sinks pickle. ``flush()``
returns only when everything written so far is durable at the destination, or raises
:class:`~storeml.errors.ConnectorError`. ``close()`` is best effort and not guaranteed to be
called (a worker can be killed); correctness never depends on it. Writes are at least once and
every sink is safe to replay (idempotent or carrying what a reader needs to drop duplicates).
"""

from __future__ import annotations

import abc

__all__ = ["Sink"]


class Sink(abc.ABC):
    """A destination that is set up lazily and flushed at the end of each task."""

    _ready: bool = False

    def ensure_setup(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    @abc.abstractmethod
    def setup(self) -> None:
        """Open clients. Called once, lazily, in the writing process."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Block until everything written is durable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients (best effort)."""

    def __getstate__(self) -> dict[str, object]:
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
