"""The VM's maintenance cron file: weekly GC of every cache, hourly its memory check (or restart),
hourly its eviction down to its budget, staggered, an hourly check of the cache disk, and (TLS on)
the hourly renewal check of the front's certificate.

Pure: no ``import pulumi``. The jobs run ``scripts/vm/registry-maintenance.sh`` (installed at
``SCRIPT_PATH``), which takes a per-registry lock so a restart and a GC never overlap.
``scripts/verify.py`` runs the same script's ``disk`` action over SSH (``disk_check``) and reads
its key=value report (``parse_disk_report``).

Why the jobs exist (Distribution in proxy mode):
- GC on a serving registry corrupts it (the in-memory blob descriptor cache goes stale and a
  re-pull answers 200 with an empty body), so GC stops the registry first: one registry at a time,
  each in its own slot of ``gc.stagger_minutes`` so the caches are never all down together.
- With the blob descriptor cache off neither major's memory grows per request (measured:
  docs/measurements/drain-and-memory.md), so by default the hourly job restarts a cache only when
  it uses ``registry.restart.memoryPercent`` of its limit (``memory``); ``restart`` on the clock
  stays for ``registry.restart.mode: schedule``. Never inside the registry's own GC slot (cron
  lines skip those hours).
- Distribution never evicts by size (distribution #3539), and its TTL expiry deletes layers other
  repositories still use (docs/measurements/cache-disk.md): the hourly ``evict`` job keeps each
  cache within its budget (components/settings/budget.py) by last pull. The disk check logs the
  usage every hour, and a WARNING once it reaches ``registry.diskUsageThresholdPercent``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from components.renderers.shell import script_text as _script_text
from components.renderers.tls import renew_cron_line
from components.settings import Settings
from components.settings.budget import cache_budgets
from components.settings.schedule import CronJob, evict_jobs, gc_jobs, restart_jobs

CRON_PATH = "/etc/cron.d/registry-mirrors"
SCRIPT_PATH = "/usr/local/sbin/registry-maintenance"
SCRIPT_SOURCE = "vm/registry-maintenance.sh"
LOG_TAG = "registry-maintenance"
# Minute of the hourly disk check: away from the default GC (:00, :20, :40) and restarts (:07+5n).
DISK_CHECK_MINUTE = 53


def _cron_line(job: CronJob) -> str:
    # Everything the script and docker print goes to syslog under one grep-able tag.
    return (
        f"{job.minute} {job.hour} * * {job.day_of_week} root "
        f"{SCRIPT_PATH} {job.action} {job.container}"
        + (f" {job.argument}" if job.argument else "")
        + f" 2>&1 | logger -t {LOG_TAG}"
    )


def render_cron(settings: Settings) -> str:
    """Text of /etc/cron.d/registry-mirrors (system crontab format: with a user column)."""
    lines = [
        "# Managed by Pulumi (registry-mirrors): weekly GC of each cache, hourly its memory check",
        "# (or restart) and its eviction down to its budget (bytes), hourly cache disk check.",
        f"# Logs: journalctl -t {LOG_TAG}  (or grep {LOG_TAG} /var/log/syslog)",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
    ]
    lines += [_cron_line(job) for job in gc_jobs(settings)]
    lines += [_cron_line(job) for job in restart_jobs(settings)]
    lines += [_cron_line(job) for job in evict_jobs(settings, cache_budgets(settings))]
    lines.append(disk_check_line(settings))
    if settings.tls.enabled:
        # Renews the front's certificate before it expires (scripts/vm/registry-tls.sh).
        lines.append(renew_cron_line(LOG_TAG))
    # cron ignores a last line without a newline.
    return "\n".join(lines) + "\n"


def disk_check_line(settings: Settings) -> str:
    """Hourly; only the log line goes to syslog (stdout is the key=value report for verify.py)."""
    threshold = settings.registry.disk_usage_threshold_percent
    budgets = " ".join(f"{name}={size}" for name, size in cache_budgets(settings).items())
    return (
        f"{DISK_CHECK_MINUTE} * * * * root {SCRIPT_PATH} disk {threshold} {budgets} "
        f"2>&1 >/dev/null | logger -t {LOG_TAG}"
    )


def script_text() -> str:
    return _script_text(SCRIPT_SOURCE)


def disk_check(threshold_percent: int, budgets: dict[str, int] | None = None) -> tuple[str, str]:
    """(command, stdin) that runs the script's ``disk`` action on the VM over SSH.

    The script travels on stdin (``bash -s``), so the check never depends on which version of
    it is installed. It needs no root: Distribution writes its data world-readable (0755/0644),
    the maintenance state (last pulls, last GC) is 0644. A cache not in ``budgets`` is reported
    with the budget its last hourly ``evict`` run recorded.
    """
    words = ["exec", "bash", "-s", "disk", str(int(threshold_percent))]
    words += [f"{name}={int(size)}" for name, size in sorted((budgets or {}).items())]
    return " ".join(shlex.quote(word) for word in words), script_text()


@dataclass(frozen=True)
class LastGc:
    at: int  # epoch seconds, when the cache served again
    kind: str  # gc (the weekly job) or evict (the GC after an eviction)
    down_seconds: int


@dataclass(frozen=True)
class NextEviction:
    repositories: int  # how many the next eviction would unlink (0: none, within budget)
    freed_bytes: int  # what that frees, estimated from the blobs no kept repository links
    protected: int  # over budget but pulled within the last day: never evicted
    first: tuple[str, ...]  # the first few names, least recently pulled first


@dataclass(frozen=True)
class DiskReport:
    path: str
    size_bytes: int
    used_bytes: int
    used_percent: int
    threshold_percent: int
    caches: dict[str, int] = field(default_factory=dict)
    budgets: dict[str, int] = field(default_factory=dict)
    # Cache -> (epoch of its least recent last pull, that repository).
    oldest_pulls: dict[str, tuple[int, str]] = field(default_factory=dict)
    next_evictions: dict[str, NextEviction] = field(default_factory=dict)
    last_gcs: dict[str, LastGc] = field(default_factory=dict)

    @property
    def over_threshold(self) -> bool:
        return self.used_percent >= self.threshold_percent


def parse_disk_report(stdout: str) -> DiskReport:
    """The ``disk`` action's key=value lines -> DiskReport; ValueError if a key is missing."""
    fields: dict[str, str] = {}
    caches: dict[str, int] = {}
    budgets: dict[str, int] = {}
    oldest: dict[str, tuple[int, str]] = {}
    evictions: dict[str, NextEviction] = {}
    last_gcs: dict[str, LastGc] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        words = value.split()
        try:
            if key == "cache":
                name, _, size = value.rpartition(" ")
                caches[name] = int(size or 0)
            elif key == "budget":
                budgets[words[0]] = int(words[1])
            elif key == "oldest_pull":
                oldest[words[0]] = (int(float(words[1])), words[2])
            elif key == "next_eviction":
                names = () if words[4] == "-" else tuple(words[4].split(","))
                evictions[words[0]] = NextEviction(int(words[1]), int(float(words[2])),
                                                   int(words[3]), names)  # fmt: skip
            elif key == "last_gc":
                last_gcs[words[0]] = LastGc(int(words[1]), words[2], int(words[3]))
            else:
                fields[key] = value
        except (IndexError, ValueError) as error:
            raise ValueError(f"unexpected disk report line ({error}): {line[:300]!r}") from None
    try:
        return DiskReport(
            path=fields["path"],
            size_bytes=int(fields["size_bytes"]),
            used_bytes=int(fields["used_bytes"]),
            used_percent=int(fields["used_percent"]),
            threshold_percent=int(fields["threshold_percent"]),
            caches=caches,
            budgets=budgets,
            oldest_pulls=oldest,
            next_evictions=evictions,
            last_gcs=last_gcs,
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"unexpected disk report ({error}): {stdout[-300:]!r}") from None
