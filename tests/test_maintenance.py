"""Maintenance cron: GC staggered without overlap, restarts, memory checks and evictions never
inside the same registry's GC; the restart mode and the cache budgets on the cron lines."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from components.renderers import maintenance
from components.settings import Settings, SettingsError, load_settings, schedule
from components.settings.budget import GIB, cache_budgets
from tests.sample import sample_raw, sample_settings

WEEK = 7 * 24 * 60


def _settings(**registry: Any) -> Settings:
    raw = sample_raw()
    raw["registry"] = registry
    return load_settings(raw)


def _expand(field: str, low: int, high: int) -> set[int]:
    """A cron field (numbers, ranges, lists, '*') -> the values it matches."""
    if field == "*":
        return set(range(low, high + 1))
    values: set[int] = set()
    for part in field.split(","):
        start, _, end = part.partition("-")
        values |= set(range(int(start), int(end or start) + 1))
    return values


def _minutes_of_week(job: schedule.CronJob) -> set[int]:
    return {
        day * 1440 + hour * 60 + job.minute
        for day in _expand(job.day_of_week, 0, 6)
        for hour in _expand(job.hour, 0, 23)
    }


def _gc_minutes(window: schedule.GcWindow) -> set[int]:
    """A window's minutes, as minutes of the week (a daily window recurs every day)."""
    repeats = range(0, WEEK, window.period)
    return {(start + minute) % WEEK for start in repeats for minute in window.minutes()}


def _lines(settings: Settings) -> list[str]:
    text = maintenance.render_cron(settings)
    return [
        line
        for line in text.splitlines()
        if line and not line.startswith("#") and not line.startswith(("SHELL=", "PATH="))
    ]


def test_default_gc_is_staggered_and_carried_into_hours() -> None:
    jobs = schedule.gc_jobs(sample_settings())
    assert [(j.container, j.day_of_week, j.hour, j.minute) for j in jobs] == [
        ("registry", "0", "3", 0),
        ("registry-ghcr", "0", "3", 20),
        ("registry-quay", "0", "3", 40),
        ("registry-k8s", "0", "4", 0),
        ("registry-kyverno", "0", "4", 20),
    ]


def test_gc_carries_into_the_next_day_and_wraps_the_week() -> None:
    settings = _settings(gc={"minute": "50", "hour": "23", "dayOfWeek": "6", "staggerMinutes": 15})
    jobs = schedule.gc_jobs(settings)
    assert [(j.day_of_week, j.hour, j.minute) for j in jobs] == [
        ("6", "23", 50),
        ("0", "0", 5),  # Saturday 23:50 + 15 min = Sunday 00:05
        ("0", "0", 20),
        ("0", "0", 35),
        ("0", "0", 50),
    ]


def _unchecked(**registry: Any) -> Settings:
    """Past load_settings' schedule check (tested in test_settings): the renderer guards too."""
    raw = sample_raw()
    raw["registry"] = registry
    return Settings.model_validate(raw)


def test_gc_jobs_that_would_overlap_are_refused() -> None:
    settings = _unchecked(gc={"minute": "0", "hour": "3", "dayOfWeek": "0", "staggerMinutes": 0})
    with pytest.raises(ValueError, match="would overlap"):
        maintenance.render_cron(settings)


def test_gc_time_must_be_a_plain_time_to_stagger_from() -> None:
    settings = _unchecked(gc={"minute": "*/5", "hour": "3", "staggerMinutes": 10})
    with pytest.raises(ValueError, match=r"registry.gc.minute"):
        maintenance.render_cron(settings)


def test_default_restarts_are_hourly_staggered_and_skip_their_gc_slot() -> None:
    settings = sample_settings()
    jobs = schedule.restart_jobs(settings)
    minutes = {j.container: j.minute for j in jobs}
    assert list(minutes.values()) == [7, 12, 17, 22, 27]
    # registry (GC Sun 03:00-03:20) would restart at 03:07: that hour is left out on Sundays.
    registry = [(j.hour, j.day_of_week) for j in jobs if j.container == "registry"]
    assert registry == [("0-2,4-23", "0"), ("*", "1-6")]
    for job_container in minutes:
        occurrences = set().union(
            *(_minutes_of_week(j) for j in jobs if j.container == job_container)
        )
        assert len(occurrences) == 7 * 24 - sum(
            1 for j in jobs if j.container == job_container and j.hour != "*"
        )


@hsettings(max_examples=150, deadline=None)
@given(
    gc_minute=st.integers(0, 59),
    gc_hour=st.integers(0, 23),
    gc_day=st.sampled_from(["*", "0", "3", "6"]),
    gc_stagger=st.integers(1, 59),
    restart_minute=st.integers(0, 59),
    restart_stagger=st.integers(0, 59),
)
def test_no_two_gc_overlap_and_no_restart_lands_in_its_own_gc(
    gc_minute: int,
    gc_hour: int,
    gc_day: str,
    gc_stagger: int,
    restart_minute: int,
    restart_stagger: int,
) -> None:
    settings = _settings(
        gc={
            "minute": str(gc_minute),
            "hour": str(gc_hour),
            "dayOfWeek": gc_day,
            "staggerMinutes": gc_stagger,
        },
        restart={"minute": str(restart_minute), "staggerMinutes": restart_stagger},
    )
    windows = {w.container: w for w in schedule.gc_windows(settings)}
    seen: set[int] = set()
    for window in windows.values():
        minutes = _gc_minutes(window)
        assert not minutes & seen, "two GC jobs overlap"
        seen |= minutes
    gc_jobs = schedule.gc_jobs(settings)
    for job in gc_jobs:
        window = windows[job.container]
        starts = {(window.start + offset) % WEEK for offset in range(0, WEEK, window.period)}
        assert _minutes_of_week(job) == starts
    restarts = schedule.restart_jobs(settings)
    for container, window in windows.items():
        occurrences = set().union(
            *(_minutes_of_week(j) for j in restarts if j.container == container)
        )
        assert occurrences, f"{container} never restarts"
        assert not occurrences & _gc_minutes(window), f"{container} restarts during its own GC"
        # Every hour outside its GC slot still has its restart.
        hours_with_restart = {m // 60 for m in occurrences}
        hours_in_gc = {m // 60 for m in _gc_minutes(window)}
        assert hours_with_restart | hours_in_gc == set(range(7 * 24))


def test_cron_file_format() -> None:
    text = maintenance.render_cron(sample_settings())
    assert text.endswith("\n")  # cron ignores a last line without newline
    lines = _lines(sample_settings())
    # 5 GCs, 7 memory checks and 7 evictions (two caches' hourly lines skip their GC hour), disk,
    # the certificate's renewal (TLS on: the default).
    assert len(lines) == 5 + 7 + 7 + 1 + 1
    assert lines[-1] == (
        "41 * * * * root /usr/local/sbin/registry-tls renew 2>&1 | logger -t registry-maintenance"
    )
    for line in lines[:-1]:
        fields = line.split()
        assert fields[5] == "root"
        assert fields[6] == maintenance.SCRIPT_PATH
        assert fields[7] in {"gc", "memory", "evict", "disk"}
        assert line.endswith("| logger -t registry-maintenance")
        assert "--delete-untagged" not in line and "%" not in line


def test_disk_check_runs_hourly_with_the_threshold_and_logs_only_its_log_line() -> None:
    settings = _settings(diskUsageThresholdPercent=65)
    [line] = [line for line in _lines(settings) if " disk " in line]
    # stdout (the key=value report verify.py reads) is dropped; stderr (the log line) is logged.
    budgets = " ".join(f"{name}={size}" for name, size in cache_budgets(settings).items())
    assert line == (
        f"{maintenance.DISK_CHECK_MINUTE} * * * * root {maintenance.SCRIPT_PATH} disk 65 "
        f"{budgets} 2>&1 >/dev/null | logger -t registry-maintenance"
    )


def test_restart_mode_memory_is_the_default_and_checks_on_the_restart_slots() -> None:
    settings = sample_settings()
    jobs = schedule.restart_jobs(settings)
    assert {j.action for j in jobs} == {"memory"} and {j.argument for j in jobs} == {"80"}
    assert [j.minute for j in jobs if j.hour == "*" and j.day_of_week == "*"] == [12, 17, 22]
    line = next(line for line in _lines(settings) if " memory registry-ghcr " in line)
    assert line.startswith("12 * * * * root ") and " memory registry-ghcr 80 2>&1 " in line
    pct = _settings(restart={"memoryPercent": 90})
    assert {j.argument for j in schedule.restart_jobs(pct)} == {"90"}
    assert schedule.restart_jobs(_settings(restart={"mode": "none"})) == []


@pytest.mark.parametrize(
    ("restart", "mode"),
    [
        ({}, "memory"),
        # A stack written before the mode existed: its explicit schedule meant restarts on it.
        ({"minute": "15"}, "schedule"),
        ({"hour": "4", "staggerMinutes": 3}, "schedule"),
        ({"minute": "15", "mode": "memory"}, "memory"),
        ({"minute": "15", "memoryPercent": 70}, "memory"),
        ({"mode": "schedule"}, "schedule"),
    ],
)
def test_an_explicit_schedule_without_a_mode_keeps_restarting_on_it(
    restart: dict[str, Any], mode: str
) -> None:
    settings = _settings(restart=restart)
    assert settings.registry.restart.mode == mode
    actions = {j.action for j in schedule.restart_jobs(settings)}
    assert actions == {"restart" if mode == "schedule" else "memory"}


def test_evictions_are_hourly_after_the_restart_slot_and_skip_their_gc() -> None:
    settings = sample_settings()
    budgets = cache_budgets(settings)
    jobs = schedule.evict_jobs(settings, budgets)
    restarts = schedule.restart_jobs(settings)
    assert [j.minute for j in jobs if j.day_of_week == "*"] == [14, 19, 24]
    windows = {w.container: w for w in schedule.gc_windows(settings)}
    for container, window in windows.items():
        occurrences = set().union(*(_minutes_of_week(j) for j in jobs if j.container == container))
        assert not occurrences & _gc_minutes(window), f"{container} evicts during its own GC"
        assert not occurrences & set().union(
            *(_minutes_of_week(j) for j in restarts if j.container == container)
        )
        assert {j.argument for j in jobs if j.container == container} == {str(budgets[container])}


def test_default_budgets_share_the_disk_below_the_warning() -> None:
    budgets = cache_budgets(sample_settings())
    # 100 GiB disk, threshold 80 %: the five caches share 70 % of it, less the front's store
    # (front.storageMb, 8 GiB by default, on the same disk).
    assert set(budgets.values()) == {(100 * GIB * 70 // 100 - 8 * GIB) // 5}
    raw = sample_raw()
    raw["vm"]["diskGb"] = 200
    raw["upstreams"] = [
        {"host": "docker.io", "port": 5000, "container": "registry", "cacheBudget": "100GiB"},
        {"host": "ghcr.io", "port": 5010, "container": "registry-ghcr"},
        {"host": "quay.io", "port": 5020, "container": "registry-quay", "cacheBudget": "5%"},
    ]
    budgets = cache_budgets(load_settings(raw))
    assert budgets == {
        "registry": 100 * GIB,
        "registry-ghcr": 200 * GIB * 70 // 100 - 100 * GIB - 10 * GIB - 8 * GIB,
        "registry-quay": 10 * GIB,
    }
    raw["registry"] = {"cacheBudget": "20GiB"}
    assert cache_budgets(load_settings(raw))["registry-ghcr"] == 20 * GIB


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("registry", "0", "registry.cacheBudget: must be more than 0"),
        ("registry", "-5GiB", "registry.cacheBudget: must be more than 0"),
        ("registry", "lots", "registry.cacheBudget: expected a size"),
        ("registry", "12XB", "registry.cacheBudget: unknown unit"),
        ("registry", 0, "registry.cacheBudget: must be more than 0"),
        ("registry", True, "registry.cacheBudget: expected a size"),
        ("registry", "150%", "registry.cacheBudget: a share of the disk is at most 100%"),
        ("registry", "1MiB", "registry.cacheBudget: at least 64MiB"),
        ("registry", "101GiB", "registry.cacheBudget: '101GiB' is more than the whole disk"),
        ("registry", "30GiB", "registry.cacheBudget: the caches' budgets (150.0 GiB) and"),
        ("upstream", "2TB", "upstreams[1].cacheBudget: '2TB' is more than the whole disk"),
        ("upstream", "x", "upstreams[1].cacheBudget: expected a size"),
        ("upstream", "70GiB", "upstreams[1].cacheBudget: together they leave the 4 other"),
    ],
)
def test_a_bad_budget_is_one_line_naming_its_key(where: str, value: Any, message: str) -> None:
    raw = sample_raw()
    if where == "registry":
        raw["registry"] = {"cacheBudget": value}
    else:
        raw["upstreams"] = [
            {"host": u.host, "port": u.port, "container": u.container}
            for u in load_settings(sample_raw()).upstreams
        ]
        raw["upstreams"][1]["cacheBudget"] = value
    with pytest.raises(SettingsError) as error:
        load_settings(raw)
    assert len(error.value.problems) == 1, error.value.problems
    assert error.value.problems[0].startswith(message), error.value.problems


def test_disk_report_parses_what_the_script_prints() -> None:
    report = maintenance.parse_disk_report(
        "path=/var/lib/registry\nsize_bytes=1000\nused_bytes=850\navailable_bytes=150\n"
        "used_percent=85\nthreshold_percent=80\ncache=registry 700\ncache=registry-ghcr 4096\n"
    )
    assert report.over_threshold
    assert report.caches == {"registry": 700, "registry-ghcr": 4096}
    assert report.budgets == {} and report.last_gcs == {}
    report = maintenance.parse_disk_report(
        "path=/x\nsize_bytes=1000\nused_bytes=850\navailable_bytes=150\nused_percent=85\n"
        "threshold_percent=80\ncache=registry 700\nlast_gc=registry 1700000000 evict 12\n"
        "budget=registry 600\noldest_pull=registry 1690000000 library/old\n"
        "next_eviction=registry 2 123 1 library/old,team/x\n"
    )
    assert report.budgets == {"registry": 600}
    assert report.oldest_pulls == {"registry": (1690000000, "library/old")}
    assert report.next_evictions["registry"] == maintenance.NextEviction(
        2, 123, 1, ("library/old", "team/x")
    )
    assert report.last_gcs["registry"] == maintenance.LastGc(1700000000, "evict", 12)
    with pytest.raises(ValueError, match="unexpected disk report"):
        maintenance.parse_disk_report("path=/x\n")


def test_the_fronts_store_counts_against_the_disk() -> None:
    # The front's store (front.storageMb) is on the same disk as the caches.
    raw = sample_raw()
    raw["registry"] = {"cacheBudget": "19GiB"}  # 95 GiB of 100: fits without the front
    with pytest.raises(SettingsError) as error:
        load_settings(raw)
    last = str(error.value).splitlines()[-1]
    assert last.startswith("registry.cacheBudget: the caches' budgets (95.0 GiB) and the front's")
    raw["front"] = {"storageMb": 4096}  # 95 + 4 GiB: fits
    assert cache_budgets(load_settings(raw))["registry"] == 19 * GIB
    raw = sample_raw()
    raw["vm"]["diskGb"] = 10  # 7 GiB shared by default, an 8 GiB store: nothing left
    with pytest.raises(SettingsError) as error:
        load_settings(raw)
    assert "front.storageMb: together they leave the 5 other cache(s) less than 64MiB" in str(
        error.value
    )
    raw["front"] = {"storageMb": 1024}
    assert set(cache_budgets(load_settings(raw)).values()) == {6 * GIB // 5}
