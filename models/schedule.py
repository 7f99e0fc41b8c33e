"""Cron expressions for scheduled batch predictions: parsed by croniter, next runs from croniter.

Five fields, separated by spaces: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
``jan``-``dec``), day of week (0-7 or ``sun``-``sat``; 0 and 7 are Sunday). Each field is ``*``,
a value, a range ``a-b``, a step ``*/n`` or ``a-b/n`` or ``a/n``, or a comma list of those. The
macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``) and
``@hourly`` stand for their usual expressions.

An optional sixth field *in front*, second (0-59), makes sub-minute schedules (``*/5 * * * * *``:
every 5 seconds), as in Spring and Quartz (croniter's ``second_at_beginning``); it is meant for
tests and demos. Five-field expressions fire at second 0. Seven fields (croniter's year field) are
refused.

croniter's own extensions are accepted as croniter reads them: ``L`` (last day of the month,
``L5`` last Friday), ``2#3`` (third Tuesday), ``?`` (same as ``*`` in the day fields) and ranges
that wrap (``fri-mon``, ``22-2``). Its hashed and random values (``H``, ``R``) are refused: a
schedule must not depend on a job id or change from one parse to the next.

Where croniter departs from Vixie cron, the text is rewritten before croniter sees it, so that the
schedule means what it says: an equal range (``5-5``) and a start at the field's maximum with a
step (``59/15``) are that single value (croniter reads both as the whole cycle); day of week 7 is
written as 0 (croniter refuses 7 with a seconds field, and drops Sunday from ``3-7/2``).

As in Vixie cron, when both day of month and day of week are restricted (neither starts with
``*``), a day matches if *either* matches; a field starting with ``*`` (``*/2``) is unrestricted
and the two are ANDed (croniter would OR ``*/2`` with a weekday). The OR is computed as the merged
runs of two croniter expressions, each with the other day field ``*``. Times are naive or UTC as
given: the schedule has no time zone of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import (
    CroniterBadCronError,
    CroniterBadDateError,
    CroniterBadTypeRangeError,
    croniter,
)

from storeml.errors import ConfigError

__all__ = ["CronSchedule", "parse_cron", "next_run"]

#: The macros, as the five fields they stand for (what croniter and Airflow read them as).
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Field name, highest value croniter takes (day of week 7 is rewritten to 0), what to write.
_SECOND = ("second", 59, "0-59")
_FIELDS = (
    ("minute", 59, "0-59"),
    ("hour", 23, "0-23"),
    ("day of month", 31, "1-31 or L"),
    ("month", 12, "1-12 or jan-dec"),
    ("day of week", 6, "0-7 or sun-sat, 0 and 7 being Sunday"),
)
_NAMES = {
    "month": {
        m: i
        for i, m in enumerate(
            ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
            start=1,
        )
    },
    "day of week": {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
_ITEM = re.compile(r"(?P<a>[0-9a-z]+)(?:-(?P<b>[0-9a-z]+))?(?:/(?P<step>[0-9]+))?")
_HASHED = re.compile(r"[hr](\(.*\))?(/.*)?")
#: How far croniter looks for the next run (Feb 29 on a given weekday recurs within 28 years,
#: 40 across 2100).
_MAX_YEARS = 50
#: :func:`parse_cron` refuses an expression with no run in the _MAX_YEARS after this.
_PROBE_START = datetime(2000, 1, 1)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression: its text, and the croniter expressions whose runs it has."""

    #: The expression as written, whitespace collapsed.
    expression: str
    #: Whether it fires other than at second 0 (a seconds field other than ``0``).
    has_seconds: bool
    #: What croniter computes, as fields (macros expanded), with Vixie rewrites applied: one
    #: expression, or two whose runs are merged when day of month and day of week are ORed (each
    #: with the other day field ``*``, so croniter ANDs within each).
    croniter_expressions: tuple[str, ...]
    #: Six fields, seconds first.
    seconds_first: bool = False
    #: The latest day of month if it is past the end of some month (29, 30, 31), else 0.
    late_days: int = 0

    def next_after(self, after: datetime) -> datetime | None:
        """The first run strictly after ``after`` (to the second), or None if it never runs.

        Keeps ``after``'s ``tzinfo`` (naive in, naive out).
        """
        found = self.upcoming(after, 1)
        return found[0] if found else None

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` runs strictly after ``after`` (fewer if it stops running)."""
        heads = [self._next(text, after) for text in self.croniter_expressions]
        out: list[datetime] = []
        while len(out) < count:
            live = [head for head in heads if head is not None]
            if not live:
                break
            out.append(min(live))
            heads = [
                self._next(text, head) if head == out[-1] else head
                for text, head in zip(self.croniter_expressions, heads, strict=True)
            ]
        return out

    def _next(self, text: str, after: datetime) -> datetime | None:
        found = self._croniter_next(text, after)
        if found is None or not self.late_days or text.split(" ")[-3] == "*":
            return found
        # croniter < 6.1 skips the first days of the month after a short one when day of month
        # has days past its end: from Feb 22, '0 0 */10 * *' gave Mar 11 (pallets-eco/croniter#1,
        # fixed in 6.1.0). Search again from the start of each such month up to what it found.
        month = after
        while (month := _next_month(month)) < found:
            before = month - timedelta(seconds=1)
            if before.day >= self.late_days:
                continue  # the month before has the latest day: nothing to overshoot
            earlier = self._croniter_next(text, before, years=1)
            if earlier is not None and earlier < found:
                found = earlier
        return found

    def _croniter_next(
        self, text: str, after: datetime, years: int = _MAX_YEARS
    ) -> datetime | None:
        runs = croniter(
            text,
            after.replace(microsecond=0),
            day_or=False,
            second_at_beginning=self.seconds_first,
            max_years_between_matches=years,
        )
        try:
            found: datetime = runs.get_next(datetime)
        except CroniterBadDateError:
            return None  # no run within that many years
        return found


def _next_month(moment: datetime) -> datetime:
    """The first second of the month after ``moment``'s."""
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def _value(text: str, field: str) -> int | None:
    if text.isdigit():
        return int(text)
    return _NAMES.get(field, {}).get(text)


def _vixie_item(item: str, field: str, top: int) -> str:
    """One comma item, rewritten where croniter reads it otherwise than Vixie cron."""
    m = _ITEM.fullmatch(item.lower())
    if m is None:
        return item  # *, */n, ?, L, 2#3 ...: croniter reads these as usual
    week = field == "day of week"
    low, high = _value(m["a"], field), None if m["b"] is None else _value(m["b"], field)
    if low is None or (m["b"] is not None and high is None) or int(m["step"] or 1) == 0:
        return item  # L, L5, or an error croniter reports
    step = int(m["step"] or 1)
    if high is None and m["step"]:
        high = 7 if week else top  # 'a/n' runs to the end of the field (of the week: to 7)
    if high is None or high == low:  # a value, or 'a-a' and 'top/n' (croniter: every value)
        value = 0 if week and low == 7 else low  # croniter refuses 7 with a seconds field
        return item if high is None and value == low else str(value)
    if week and low == 7:
        return f"0-{m['b']}" + (f"/{step}" if m["step"] else "")
    if week and high == 7:  # a..6 every n, and Sunday if the steps reach 7
        rest = str(low) if low == 6 else f"{low}-6" + (f"/{step}" if m["step"] else "")
        return f"{rest},0" if (7 - low) % step == 0 else rest
    return item  # 'a-b', 'a-b/n', and 'a/n' below the top, which croniter reads as a-top/n


def _vixie_field(text: str, field: str, top: int) -> str:
    return ",".join(_vixie_item(item, field, top) for item in text.split(","))


def _reason(exc: Exception, probe: str) -> str:
    """croniter's message without its echo of the expression (or its traceback)."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    reason = lines[-1].replace(f"[{probe}]", "").replace(probe, "").strip(" ,.:")
    return reason.removeprefix("is ").strip() or type(exc).__name__


def _check_field(expression: str, name: str, hint: str, text: str, probe: str, sab: bool) -> None:
    """Raise a ConfigError naming the field if croniter refuses ``probe`` (``text`` alone)."""
    if _HASHED.fullmatch(text.lower()):
        raise ConfigError(
            f"cron expression {expression!r}: the {name} field {text!r} is a hashed or random"
            f" value (H, R), which is not supported; write the {name} ({hint})"
        )
    try:
        croniter.expand(probe, second_at_beginning=sab)
    except (CroniterBadCronError, CroniterBadTypeRangeError) as exc:
        raise ConfigError(
            f"cron expression {expression!r}: the {name} field {text!r} is refused by croniter:"
            f" {_reason(exc, probe)} ({name} takes {hint})"
        ) from exc


def parse_cron(expression: str) -> CronSchedule:
    """Parse a five-field expression (or six, seconds first) or a macro.

    :class:`ConfigError` names the expression, the bad field and croniter's reason, or says the
    expression never runs.
    """
    text = " ".join(str(expression).split())
    parts = text.split(" ")
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise ConfigError(
                f"cron expression {expression!r} is not a known macro; use one of"
                f" {', '.join(_MACROS)}, or write 5 fields"
            )
        schedule = _parse_fields(expression, text, _MACROS[text.lower()].split(" "))
    elif len(parts) not in (5, 6):
        raise ConfigError(
            f"cron expression {expression!r} has {len(parts)} fields; write 5 (minute hour"
            f" day-of-month month day-of-week), e.g. '0 3 * * *' for 03:00 daily, 6 with seconds"
            f" first, or a macro ({', '.join(_MACROS)})"
        )
    else:
        schedule = _parse_fields(expression, text, parts)
    if schedule.next_after(_PROBE_START) is None:
        raise ConfigError(
            f"cron expression {expression!r} never runs (no such day in any month); fix the day"
            " of month or the month"
        )
    return schedule


def _parse_fields(expression: str, text: str, parts: list[str]) -> CronSchedule:
    seconds_first = len(parts) == 6
    calendar = [
        _vixie_field(part, name, top)
        for part, (name, top, _) in zip(parts[-5:], _FIELDS, strict=True)
    ]
    # Each field is checked alone, calendar fields in five-field mode: croniter reads day of
    # month 0 as 1 when there is a seconds field.
    for index, (name, _, hint) in enumerate(_FIELDS):
        probe = ["*"] * 5
        probe[index] = calendar[index]
        _check_field(expression, name, hint, parts[-5 + index], " ".join(probe), False)
    seconds = []
    if seconds_first:
        name, top, hint = _SECOND
        seconds = [_vixie_field(parts[0], name, top)]
        _check_field(expression, name, hint, parts[0], f"{seconds[0]} * * * * *", True)
    full = " ".join(seconds + calendar)
    try:
        expanded, _ = croniter.expand(full, second_at_beginning=seconds_first)
    except (CroniterBadCronError, CroniterBadTypeRangeError) as exc:
        raise ConfigError(f"cron expression {expression!r}: {_reason(exc, full)}") from exc
    # Vixie: both day fields restricted (not starting with '*', nor croniter's '?') -> OR. Two
    # expressions, not croniter's day_or: croniter sees a '*' item or a full list as '*' and
    # then ANDs ('5,*' with 'mon' gave Mondays), and croniter < 6.3 finds nothing when the
    # day of month never occurs ('0 0 30 2 mon'; pallets-eco/croniter#243).
    restricted = not parts[-3].startswith(("*", "?")) and not parts[-1].startswith(("*", "?"))
    sides: tuple[str, ...] = (full,)
    if restricted:
        day, week = calendar.copy(), calendar.copy()
        day[4] = week[2] = "*"
        sides = (" ".join(seconds + day), " ".join(seconds + week))
    return CronSchedule(
        expression=text,
        has_seconds=seconds_first and expanded[5] != [0],
        croniter_expressions=sides,
        seconds_first=seconds_first,
        late_days=max(
            (day for day in expanded[2] if isinstance(day, int) and day >= 29), default=0
        ),
    )


def next_run(expression: str, after: datetime) -> datetime | None:
    """The first time strictly after ``after`` that ``expression`` fires."""
    return parse_cron(expression).next_after(after)
