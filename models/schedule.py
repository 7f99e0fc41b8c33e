"""Five-field cron expressions: parse, and find the next run (for scheduled batch predictions).

Fields, separated by spaces: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
``jan``-``dec``), day of week (0-7 or ``sun``-``sat``; 0 and 7 are Sunday). Each field is ``*``,
a value, a range ``a-b``, a step ``*/n`` or ``a-b/n`` or ``a/n``, or a comma list of those. The
macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and
``@hourly`` stand for their usual expressions.

An optional sixth field *in front*, second (0-59), makes sub-minute schedules (``*/5 * * * * *``:
every 5 seconds), as in Spring and Quartz; it is meant for tests and demos. Five-field expressions
fire at second 0, exactly as before.

As in Vixie cron, when both day of month and day of week are restricted (neither starts with
``*``), a day matches if *either* matches. Times are naive or UTC as given: the schedule has no
time zone of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from storeml.errors import ConfigError

__all__ = ["CronSchedule", "parse_cron", "next_run"]

_SECOND = ("second", 0, 59)
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: How far :meth:`CronSchedule.next_after` looks ahead (covers Feb 29 schedules).
_HORIZON_DAYS = 366 * 8


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression: the allowed values of each field (day of week 0-6, Sunday 0).

    ``seconds`` is ``{0}`` for five-field expressions.
    """

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool
    seconds: frozenset[int] = frozenset({0})

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_month or in_week
        return in_month and in_week

    @property
    def has_seconds(self) -> bool:
        """Whether the expression has the optional seconds field (fires other than at :00)."""
        return self.seconds != frozenset({0})

    def next_after(self, after: datetime) -> datetime | None:
        """The first run strictly after ``after`` (to the second), or None if it never runs.

        Keeps ``after``'s ``tzinfo`` (naive in, naive out).
        """
        start = after.replace(microsecond=0) + timedelta(seconds=1)
        day = start.replace(hour=0, minute=0, second=0)
        hours, minutes, seconds = sorted(self.hours), sorted(self.minutes), sorted(self.seconds)
        for offset in range(_HORIZON_DAYS):
            current = day + timedelta(days=offset)
            if not self._day_matches(current):
                continue
            for hour in hours:
                if offset == 0 and hour < start.hour:
                    continue
                for minute in minutes:
                    for second in seconds:
                        candidate = current.replace(hour=hour, minute=minute, second=second)
                        if candidate >= start:
                            return candidate
        return None


def _value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    if not text.isdigit():
        known = f" or a name ({', '.join(names)})" if names else ""
        raise ValueError(f"{field} value {text!r} is not a number from {low} to {high}{known}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{field} value {value} is out of range {low}-{high}")
    return value


def _field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"{field} field {text!r} has an empty list item")
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field} step {step_text!r} in {part!r} must be a number >= 1")
            step = int(step_text)
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first = _value(a, field, low, high, names)
            last = _value(b, field, low, high, names)
            if first > last:
                raise ValueError(f"{field} range {body!r} runs backwards; write it low-high")
        else:
            first = _value(body, field, low, high, names)
            last = high if slash else first
        out.update(range(first, last + 1, step))
    return out


def parse_cron(expression: str) -> CronSchedule:
    """Parse a five-field expression (or six, seconds first) or a macro.

    :class:`ConfigError` names the bad field.
    """
    text = " ".join(str(expression).split())
    expanded = _MACROS.get(text.lower(), text)
    parts = expanded.split(" ")
    if len(parts) not in (5, 6):
        raise ConfigError(
            f"cron expression {expression!r} has {len(parts)} fields; write 5 (minute hour"
            f" day-of-month month day-of-week), e.g. '0 3 * * *' for 03:00 daily, or a macro"
            f" ({', '.join(_MACROS)})"
        )
    seconds = {0}
    if len(parts) == 6:
        try:
            seconds = _field(parts[0], *_SECOND, {})
        except ValueError as exc:
            raise ConfigError(f"cron expression {expression!r}: {exc}") from exc
        parts = parts[1:]
    values: list[set[int]] = []
    for text_field, (field, low, high) in zip(parts, _FIELDS, strict=True):
        names = _MONTHS if field == "month" else _DAYS if field == "day of week" else {}
        try:
            values.append(_field(text_field, field, low, high, names))
        except ValueError as exc:
            raise ConfigError(f"cron expression {expression!r}: {exc}") from exc
    weekdays = {d % 7 for d in values[4]}
    schedule = CronSchedule(
        expression=text,
        minutes=frozenset(values[0]),
        hours=frozenset(values[1]),
        days=frozenset(values[2]),
        months=frozenset(values[3]),
        weekdays=frozenset(weekdays),
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
        seconds=frozenset(seconds),
    )
    if schedule.next_after(datetime(2000, 1, 1)) is None:
        raise ConfigError(
            f"cron expression {expression!r} never runs (no such day in any month); fix the day"
            " of month or the month"
        )
    return schedule


def next_run(expression: str, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` that ``expression`` fires."""
    return parse_cron(expression).next_after(after)
