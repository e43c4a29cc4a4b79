"""The VM's maintenance cron file: weekly GC and hourly restart of every cache, staggered, and an
hourly check of the cache disk.

Pure: no ``import pulumi``. The jobs run ``scripts/vm/registry-maintenance.sh`` (installed at
``SCRIPT_PATH``), which takes a per-registry lock so a restart and a GC never overlap.
``scripts/verify.py`` runs the same script's ``disk`` action over SSH (``disk_check``) and reads
its key=value report (``parse_disk_report``).

Why the jobs exist (Distribution in proxy mode):
- GC on a serving registry corrupts it (the in-memory blob descriptor cache goes stale and a
  re-pull answers 200 with an empty body), so GC stops the registry first: one registry at a time,
  each in its own slot of ``gc.stagger_minutes`` so the caches are never all down together.
- Memory grows without bound in 2.x, so each registry restarts hourly, staggered, and never
  inside its own GC slot (cron lines skip those hours).
- Distribution never evicts by size (distribution #3539): the disk check logs the usage every
  hour, and a WARNING once it reaches ``registry.diskUsageThresholdPercent``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal

from components.renderers.shell import script_text as _script_text
from components.settings import Schedule, Settings

CRON_PATH = "/etc/cron.d/registry-mirrors"
SCRIPT_PATH = "/usr/local/sbin/registry-maintenance"
SCRIPT_SOURCE = "vm/registry-maintenance.sh"
LOG_TAG = "registry-maintenance"
# Minute of the hourly disk check: away from the default GC (:00, :20, :40) and restarts (:07+5n).
DISK_CHECK_MINUTE = 53
_DAY = 24 * 60
_WEEK = 7 * _DAY


@dataclass(frozen=True)
class CronJob:
    action: Literal["gc", "restart"]
    container: str
    minute: int
    hour: str
    day_of_week: str

    def line(self) -> str:
        # Everything the script and docker print goes to syslog under one grep-able tag.
        return (
            f"{self.minute} {self.hour} * * {self.day_of_week} root "
            f"{SCRIPT_PATH} {self.action} {self.container} 2>&1 | logger -t {LOG_TAG}"
        )


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
    """Hourly restart per registry, skipping the hours in which it would land in its GC slot.

    The lock in the script covers the rest (a custom hour/day restart schedule, a slow GC).
    """
    restart = settings.registry.restart
    windows = {w.container: w for w in gc_windows(settings)}
    jobs: list[CronJob] = []
    for index, upstream in enumerate(settings.upstreams):
        minute = restart_minute(restart, index)
        every_hour = restart.hour == "*" and restart.day_of_week == "*"
        window = windows[upstream.container]
        blocked = {
            (point // _DAY, point % _DAY // 60)
            for point in window.minutes()
            if point % 60 == minute
        }
        if not every_hour or not blocked:
            jobs.append(
                CronJob("restart", upstream.container, minute, restart.hour, restart.day_of_week)
            )
            continue
        days = sorted({day for day, _ in blocked})
        weekly = window.period == _WEEK
        for day in days:
            hours = [h for h in range(24) if (day, h) not in blocked]
            jobs.append(
                CronJob(
                    "restart",
                    upstream.container,
                    minute,
                    _ranges(hours),
                    str(day) if weekly else "*",
                )
            )
        if weekly:
            other_days = [d for d in range(7) if d not in days]
            jobs.append(CronJob("restart", upstream.container, minute, "*", _ranges(other_days)))
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


def render_cron(settings: Settings) -> str:
    """Text of /etc/cron.d/registry-mirrors (system crontab format: with a user column)."""
    lines = [
        "# Managed by Pulumi (registry-mirrors): weekly GC and hourly restart of each cache,",
        "# hourly cache disk check.",
        f"# Logs: journalctl -t {LOG_TAG}  (or grep {LOG_TAG} /var/log/syslog)",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
    ]
    lines += [job.line() for job in gc_jobs(settings)]
    lines += [job.line() for job in restart_jobs(settings)]
    lines.append(disk_check_line(settings))
    # cron ignores a last line without a newline.
    return "\n".join(lines) + "\n"


def disk_check_line(settings: Settings) -> str:
    """Hourly; only the log line goes to syslog (stdout is the key=value report for verify.py)."""
    threshold = settings.registry.disk_usage_threshold_percent
    return (
        f"{DISK_CHECK_MINUTE} * * * * root {SCRIPT_PATH} disk {threshold} "
        f"2>&1 >/dev/null | logger -t {LOG_TAG}"
    )


def script_text() -> str:
    return _script_text(SCRIPT_SOURCE)


def disk_check(threshold_percent: int) -> tuple[str, str]:
    """(command, stdin) that runs the script's ``disk`` action on the VM over SSH.

    The script travels on stdin (``bash -s``), so the check never depends on which version of
    it is installed. It needs no root: Distribution writes its data world-readable (0755/0644).
    """
    return f"exec bash -s disk {shlex.quote(str(int(threshold_percent)))}", script_text()


@dataclass(frozen=True)
class DiskReport:
    path: str
    size_bytes: int
    used_bytes: int
    used_percent: int
    threshold_percent: int
    caches: dict[str, int] = field(default_factory=dict)

    @property
    def over_threshold(self) -> bool:
        return self.used_percent >= self.threshold_percent


def parse_disk_report(stdout: str) -> DiskReport:
    """The ``disk`` action's key=value lines -> DiskReport; ValueError if a key is missing."""
    fields: dict[str, str] = {}
    caches: dict[str, int] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "cache":
            name, _, size = value.rpartition(" ")
            caches[name] = int(size or 0)
        else:
            fields[key] = value
    try:
        return DiskReport(
            path=fields["path"],
            size_bytes=int(fields["size_bytes"]),
            used_bytes=int(fields["used_bytes"]),
            used_percent=int(fields["used_percent"]),
            threshold_percent=int(fields["threshold_percent"]),
            caches=caches,
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"unexpected disk report ({error}): {stdout[-300:]!r}") from None
