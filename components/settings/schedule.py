"""Where each cache's GC and restart fall: one slot layout, which ``load_settings`` checks (plain
times whose staggered GC slots never overlap) and the maintenance renderer turns into cron lines
(components/renderers/maintenance.py, which also says why the jobs exist). Both import it from
here, so neither imports the other. Pure: no ``import pulumi``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from components.settings.model import Settings
from components.settings.registry import Schedule

_DAY = 24 * 60
_WEEK = 7 * _DAY


# The hourly eviction check runs this many minutes after the cache's restart/memory slot, so
# the two never ask for the same lock at the same minute (the lock covers any other clash).
EVICT_MINUTE_OFFSET = 2


@dataclass(frozen=True)
class CronJob:
    action: Literal["gc", "restart", "memory", "evict"]
    container: str
    minute: int
    hour: str
    day_of_week: str
    # The script's third argument: memory's percent, evict's budget in bytes.
    argument: str = ""


@dataclass(frozen=True)
class GcWindow:
    """One registry's GC slot in minutes from the start of the period (Sunday 00:00 or 00:00)."""

    container: str
    start: int
    length: int
    period: int  # _WEEK for a weekly GC, _DAY for a daily one

    def minutes(self) -> set[int]:
        return {(self.start + offset) % self.period for offset in range(self.length)}


def _integer(field: str, value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"{field}: expected a plain number to stagger from (got {value!r})")
    return int(value)


def gc_windows(settings: Settings) -> list[GcWindow]:
    """Each registry's GC slot: start = gc time + index * stagger, carried into hours and days."""
    gc = settings.registry.gc
    minute = _integer("registry.gc.minute", gc.minute)
    hour = _integer("registry.gc.hour", gc.hour)
    if minute > 59 or hour > 23:
        raise ValueError(f"registry.gc: {hour}:{minute} is not a time of day")
    weekly = gc.day_of_week != "*"
    day = _integer("registry.gc.dayOfWeek", gc.day_of_week) % 7 if weekly else 0
    period = _WEEK if weekly else _DAY
    base = day * _DAY + hour * 60 + minute
    length = max(gc.stagger_minutes, 1)
    windows = [
        GcWindow(u.container, (base + index * gc.stagger_minutes) % period, length, period)
        for index, u in enumerate(settings.upstreams)
    ]
    taken: dict[int, str] = {}
    for window in windows:
        for point in window.minutes():
            if point in taken:
                raise ValueError(
                    f"registry.gc.staggerMinutes: GC of {window.container} would overlap "
                    f"GC of {taken[point]} (stagger {gc.stagger_minutes} min)"
                )
            taken[point] = window.container
    return windows


def gc_jobs(settings: Settings) -> list[CronJob]:
    jobs = []
    for window in gc_windows(settings):
        weekly = window.period == _WEEK
        jobs.append(
            CronJob(
                action="gc",
                container=window.container,
                minute=window.start % 60,
                hour=str(window.start % _DAY // 60),
                day_of_week=str(window.start // _DAY) if weekly else "*",
            )
        )
    return jobs


def restart_minute(restart: Schedule, index: int) -> int:
    return (
        _integer("registry.restart.minute", restart.minute) + index * restart.stagger_minutes
    ) % 60


def restart_jobs(settings: Settings) -> list[CronJob]:
    """Per registry, on the restart schedule (hourly by default), skipping the hours in which it
    would land in its GC slot: ``restart`` (mode schedule), ``memory PERCENT`` (mode memory, the
    default: restart only above that share of the memory limit), nothing (mode none).

    The lock in the script covers the rest (a custom hour/day restart schedule, a slow GC).
    """
    restart = settings.registry.restart
    minutes = [restart_minute(restart, index) for index in range(len(settings.upstreams))]
    if restart.mode == "none":
        return []
    if restart.mode == "memory":
        return _slot_jobs(settings, "memory", minutes, restart.hour, restart.day_of_week,
                          lambda _: str(restart.memory_percent))  # fmt: skip
    return _slot_jobs(settings, "restart", minutes, restart.hour, restart.day_of_week)


def evict_jobs(settings: Settings, budgets: dict[str, int]) -> list[CronJob]:
    """Hourly per registry, EVICT_MINUTE_OFFSET minutes after its restart slot, skipping the
    hours of its GC slot: ``evict BUDGET_BYTES``."""
    restart = settings.registry.restart
    minutes = [
        (restart_minute(restart, index) + EVICT_MINUTE_OFFSET) % 60
        for index in range(len(settings.upstreams))
    ]
    return _slot_jobs(settings, "evict", minutes, "*", "*", lambda c: str(budgets[c]))


def _slot_jobs(
    settings: Settings,
    action: Literal["restart", "memory", "evict"],
    minutes: list[int],
    hour_field: str,
    day_field: str,
    argument: Any = None,
) -> list[CronJob]:
    windows = {w.container: w for w in gc_windows(settings)}
    jobs: list[CronJob] = []
    for index, upstream in enumerate(settings.upstreams):
        minute = minutes[index]
        every_hour = hour_field == "*" and day_field == "*"
        window = windows[upstream.container]
        extra = argument(upstream.container) if argument is not None else ""
        blocked = {
            (point // _DAY, point % _DAY // 60)
            for point in window.minutes()
            if point % 60 == minute
        }
        if not every_hour or not blocked:
            jobs.append(CronJob(action, upstream.container, minute, hour_field, day_field, extra))
            continue
        days = sorted({day for day, _ in blocked})
        weekly = window.period == _WEEK
        for day in days:
            hours = [h for h in range(24) if (day, h) not in blocked]
            jobs.append(
                CronJob(
                    action,
                    upstream.container,
                    minute,
                    _ranges(hours),
                    str(day) if weekly else "*",
                    extra,
                )
            )
        if weekly:
            other_days = [d for d in range(7) if d not in days]
            jobs.append(
                CronJob(action, upstream.container, minute, "*", _ranges(other_days), extra)
            )
    return jobs


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 4, 5] -> '0-2,4-5' (cron list syntax)."""
    parts: list[str] = []
    start = previous = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == previous + 1:
            previous = value
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if value is not None:
            start = previous = value
    return ",".join(parts)
