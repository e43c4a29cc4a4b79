"""Section ``registry``: how the Distribution containers run on the VM (image and its major,
proxy TTL, limits, who may reach them) and their GC and restart schedules."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from components.settings.budget import check_budget
from components.settings.checks import CronField, _Model, check_cron_field
from components.settings.errors import shown


class Schedule(_Model):
    """A cron schedule: weekly GC or the hourly restart/memory slot, staggered per registry.

    Fields are range-checked here, so the cron file never gets a value cron would read
    differently (``60`` minutes is not minute 0); whether a field may be more than a plain number
    is the slot layout's rule (GC slots are staggered from one plain time), checked by
    ``load_settings`` through components/settings/schedule.py."""

    minute: CronField = Field(description="Cron minute of the first registry's job.")
    hour: CronField = Field(default="*", description="Cron hour.")
    day_of_week: CronField = Field(default="*", description="Cron day of week (0 = Sunday).")
    stagger_minutes: int = Field(
        ge=0, le=59, description="Minutes added per registry so no two jobs overlap."
    )

    @field_validator("minute", "hour", "day_of_week")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        assert info.field_name is not None
        return check_cron_field(value, info.field_name)


class GcSchedule(Schedule):
    """Weekly GC: Sunday 03:00 for the first registry, then every 20 minutes the next."""

    minute: CronField = Field(default="0", description="Cron minute of the first registry's GC.")
    hour: CronField = Field(default="3", description="Cron hour (a plain number).")
    day_of_week: CronField = Field(
        default="0", description="Day of week (0 or 7 = Sunday), or '*' for a daily GC."
    )
    stagger_minutes: int = Field(
        default=20, ge=0, le=59, description="Minutes added per registry so no two GCs overlap."
    )


class RestartSchedule(Schedule):
    """When each cache is restarted (mode ``schedule``) or its memory checked (mode ``memory``):
    hourly at minute 7 for the first registry, then every 5 minutes the next.

    Mode ``memory`` (default): restart, drained, only when the container uses ``memoryPercent``
    of ``registry.memoryMb`` or more. With the blob descriptor cache off neither major's memory
    grows per request (docs/measurements/drain-and-memory.md): a restart on the clock frees
    nothing. A stack that sets the schedule (minute, hour, dayOfWeek or staggerMinutes) but no
    ``mode`` or ``memoryPercent`` keeps its restarts on the clock (mode ``schedule``), as before."""

    minute: CronField = Field(default="7", description="Cron minute of the first restart.")
    stagger_minutes: int = Field(default=5, ge=0, le=59, description="Minutes added per registry.")
    mode: Literal["memory", "schedule", "none"] = Field(
        default="memory",
        description="memory: restart only above memoryPercent of memoryMb (checked on the "
        "schedule); schedule: restart on the schedule; none: never.",
    )
    memory_percent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="Mode memory: share of registry.memoryMb (as docker stats counts it) from "
        "which a cache is restarted, drained, before the limit's OOM kill (no drain).",
    )

    @model_validator(mode="before")
    @classmethod
    def _explicit_schedule(cls, data: Any) -> Any:
        # Before mode existed, setting the schedule meant restarts on it: keep them.
        if not isinstance(data, Mapping):
            return data
        given = set(data)
        if given & {"mode", "memoryPercent", "memory_percent"}:
            return data
        if given & {"minute", "hour", "dayOfWeek", "day_of_week", "staggerMinutes",
                    "stagger_minutes"}:  # fmt: skip
            return {**data, "mode": "schedule"}
        return data


# Majors of Distribution this program renders a config for (components/renderers/registry_config
# holds what differs between them).
REGISTRY_MAJORS = (2, 3)
_VERSION_TAG = re.compile(r"^v?(\d+)(\.\d+){0,2}([-+][\w.-]*)?$")
_GO_DURATION = re.compile(r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$")


def registry_image_major(image: str) -> int:
    """Distribution's major version, read from the image reference's tag.

    ``registry:3.1.1``, ``registry:2.8.3``, ``registry:3.1.1@sha256:...``,
    ``mirror.lan:5000/library/registry:v3.0.0``. A digest alone names no version, and the config a
    registry reads depends on it (its path, its keys), so it is refused with the fix: docker pulls
    ``name:tag@digest`` by the digest and the tag only tells this program which version it is.
    """
    name, at, _ = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    _, colon, tag = last.partition(":")
    if not colon:
        if at:
            example = shown(f"{name}:3.1.1@sha256:...")
            fix = f"write its version tag before the digest, e.g. {example} "
            fix += "(docker pulls by the digest; the tag only names the version)"
        else:
            fix = f"add its version tag, e.g. {shown(f'{name}:3.1.1')}"
        raise ValueError(
            f"names no Distribution version, and the major decides the config path and keys: {fix}"
        )
    match = _VERSION_TAG.match(tag)
    if match is None:
        example = shown(f"{name.rsplit(':', 1)[0]}:3.1.1")
        raise ValueError(
            f"tag {shown(tag)} is not a Distribution version: use the image's version tag, e.g. "
            f"{example} (a digest may follow: ':3.1.1@sha256:...')"
        )
    major = int(match.group(1))
    if major not in REGISTRY_MAJORS:
        raise ValueError(
            f"Distribution {major}.x is not supported (supported majors: "
            f"{', '.join(map(str, REGISTRY_MAJORS))})"
        )
    return major


class RegistrySettings(_Model):
    """How the Distribution containers run on the VM."""

    image: str = Field(
        # Distribution 3 fetches each blob once on a cache miss; 2.8 fetches it twice (README).
        default="registry:3.1.1",
        description="Registry image, pinned: a version tag, optionally with @sha256 digest.",
    )
    proxy_ttl: str | None = Field(
        default=None,
        description="Distribution 3 only: how long cached content lives (Go duration, e.g. "
        "168h; 0 = never expires). Unset: 0 on Distribution 3 (the cache budget's eviction "
        "bounds the disk; expiry deletes layers other repositories share), 168h on 2.x "
        "(hard-coded).",
    )
    cache_budget: str | int | None = Field(
        default=None,
        description="Most disk each cache may use (20GiB, 500MB, or 15% of vm.diskGb), unless "
        "its upstream sets its own; over it the hourly job evicts the least recently pulled "
        "repositories. Unset: the caches share (diskUsageThresholdPercent - 10)% of the disk.",
    )
    disk_usage_threshold_percent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="Cache disk usage (percent of the VM filesystem) that the maintenance job "
        "logs as a warning and scripts/verify.py reports as a failure.",
    )
    memory_mb: int = Field(default=1024, ge=128, le=65_536, description="Memory limit per cache.")
    log_level: Literal["error", "warn", "info", "debug"] = Field(
        default="info", description="Distribution log level (info keeps access logs)."
    )
    gc: GcSchedule = Field(
        default_factory=GcSchedule,
        description="Weekly garbage collection, one registry after another.",
    )
    restart: RestartSchedule = Field(
        default_factory=RestartSchedule,
        description="Restart policy: on memory (default), on the schedule, or none; and when.",
    )
    allowed_cidrs: list[str] | None = Field(
        default=None,
        description="Who may pull from the caches; default: the node addresses (/32 each).",
    )
    admin_cidrs: list[str] = Field(
        default_factory=lambda: ["10.0.0.0/8"], min_length=1, description="Who may SSH to the VM."
    )

    @field_validator("cache_budget", mode="before")
    @classmethod
    def _cache_budget(cls, value: object) -> object:
        return check_budget(value)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not re.search(r"(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$", value) or value.endswith(
            ":latest"
        ):
            raise ValueError(
                "expected a pinned image reference (a tag other than latest, or a digest)"
            )
        registry_image_major(value)
        return value

    @field_validator("proxy_ttl")
    @classmethod
    def _proxy_ttl(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not _GO_DURATION.match(value):
            raise ValueError(
                "expected a Go duration such as 168h or 90m (no 'd' unit), or 0 to never expire"
            )
        image = info.data.get("image")  # absent when the image itself was invalid
        if image is not None and registry_image_major(image) == 2:
            # 2.8 hard-codes repositoryTTL = 168h (registry/proxy/proxymanifeststore.go) and
            # never reads proxy.ttl: the setting would silently do nothing.
            raise ValueError(
                f"Distribution 2.x ({image}) ignores proxy.ttl and always expires after 168h: "
                "use a registry:3 image (e.g. registry:3.1.1) or remove registry.proxyTtl"
            )
        return value

    @property
    def major(self) -> int:
        """Distribution's major version of ``image`` (2 or 3)."""
        return registry_image_major(self.image)

    @field_validator("allowed_cidrs", "admin_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str] | None) -> list[str] | None:
        for cidr in value or []:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError:
                raise ValueError(
                    f"{shown(cidr)} is not a network in CIDR form (e.g. 10.0.20.0/24;"
                    " no host bits set)"
                ) from None
        return value
