"""The alert state machine: firing once, reminders after the cool-down, resolved once, replays."""

from __future__ import annotations

from storeml.models.alerting import AlertState, step

W = 300_000
COOLDOWN = 3 * W


def run(states: list[bool], cooldown: int = COOLDOWN) -> list[str | None]:
    state, sent = AlertState(), []
    for i, firing in enumerate(states):
        state, message = step(
            state,
            firing_now=firing,
            value=float(i),
            threshold=0.5,
            window_start=i * W,
            window_end=(i + 1) * W,
            cooldown_ms=cooldown,
        )
        sent.append(message)
    return sent


def test_firing_cooldown_resolved() -> None:
    assert run([False, True, True, True, True, True, False, False]) == [
        None,
        "firing",
        None,
        None,
        "firing",
        None,
        "resolved",
        None,
    ]


def test_flapping_fires_again_and_zero_cooldown_repeats() -> None:
    assert run([True, False, True]) == ["firing", "resolved", "firing"]
    assert run([True, True, True], cooldown=0) == ["firing", "firing", "firing"]


def test_state_and_replayed_windows() -> None:
    state, message = step(
        AlertState(),
        firing_now=True,
        value=2.0,
        threshold=1.0,
        window_start=0,
        window_end=W,
        cooldown_ms=0,
    )
    assert message == "firing" and state == AlertState(True, 0, W, 2.0)
    again, message = step(
        state,
        firing_now=True,
        value=2.0,
        threshold=1.0,
        window_start=0,
        window_end=W,
        cooldown_ms=0,
    )
    assert message is None and again == state  # the same window after a restart
    resolved, message = step(
        state,
        firing_now=False,
        value=0.1,
        threshold=1.0,
        window_start=W,
        window_end=2 * W,
        cooldown_ms=0,
    )
    assert message == "resolved" and not resolved.firing and resolved.since_window is None
    replay, message = step(
        resolved,
        firing_now=False,
        value=0.1,
        threshold=1.0,
        window_start=W,
        window_end=2 * W,
        cooldown_ms=0,
    )
    assert message is None and replay == resolved
