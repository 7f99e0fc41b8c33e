"""Alert state machine per (store, monitor, statistic, column): firing, cool-down, resolved (pure).

:func:`step` is called once per evaluated window, in event time, with whether the statistic
breaches its threshold in that window. It says what to send:

* ``"firing"`` when the alert starts, and again while it keeps firing once ``window_end -
  last_sent_ms >= cooldown_ms`` (a reminder at most once per cool-down);
* ``"resolved"`` once, in the first window that no longer breaches;
* None otherwise.

A window that ends at or before the last sent one never sends (the same window replayed after a
restart, at-least-once delivery), so sending stays deduplicated by event time alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["AlertState", "step"]


@dataclass(frozen=True)
class AlertState:
    """``since_window``: start of the window the alert began in; ``last_sent_ms``: end of the
    window whose message was sent last; ``value``: the statistic's last value."""

    firing: bool = False
    since_window: int | None = None
    last_sent_ms: int | None = None
    value: float = 0.0


def step(
    state: AlertState,
    *,
    firing_now: bool,
    value: float,
    threshold: float,
    window_start: int,
    window_end: int,
    cooldown_ms: int,
) -> tuple[AlertState, str | None]:
    """The next state and the message to send (``"firing"``, ``"resolved"`` or None).

    ``threshold`` is not compared here (``firing_now`` says whether it is breached); it is part
    of the signature so callers pass what the alert message reports.
    """
    del threshold  # reported by the caller's message; the decision is firing_now
    if state.last_sent_ms is not None and window_end <= state.last_sent_ms:
        return state, None  # a replayed or older window
    if firing_now and not state.firing:
        return AlertState(True, window_start, window_end, float(value)), "firing"
    if firing_now:
        last = state.last_sent_ms
        if last is None or window_end - last >= cooldown_ms:
            return replace(state, last_sent_ms=window_end, value=float(value)), "firing"
        return replace(state, value=float(value)), None
    if state.firing:
        return AlertState(False, None, window_end, float(value)), "resolved"
    return replace(state, value=float(value)), None
