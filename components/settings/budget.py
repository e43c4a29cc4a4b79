"""How much disk each cache may use (``registry.cacheBudget``, ``upstreams[].cacheBudget``): a size
(``20GiB``, ``500MB``, plain bytes) or a share of the VM's disk (``15%`` of ``vm.diskGb``). The
hourly ``evict`` job (scripts/vm/cache-budget.sh) unlinks the least recently pulled repositories
of a cache over its budget and garbage-collects.

Default (no budget set anywhere): the caches share ``diskUsageThresholdPercent - 10`` % of the
disk equally, less the front's store (``front.storageMb``, on the same disk: 70 GiB - 8 GiB with
the default 80 % threshold on the default 100 GiB, 12.4 GiB each for five caches), so eviction
keeps the disk under the usage warning with room for the OS, the
images and the containers' rotated logs. Measured in docs/measurements/cache-disk.md: nothing
else bounds a cache by size (TTL expiry frees on the clock, GC frees only what expiry unlinked).

Pure: no ``import pulumi``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.settings.errors import shown
from components.settings.front import FrontSettings

GIB = 1024**3
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z]*|%)\s*$")
# The smallest budget worth a stop and a GC: below it a few images already exceed it.
MIN_BUDGET_BYTES = 64 * 1024**2
# Share of the disk left outside the default budgets, below the usage threshold: the OS, the
# registry images, the containers' logs (5 x 20 MB each).
DEFAULT_HEADROOM_PERCENT = 10
# front.storageMb's default (components/settings/front.py), for raw config that does not set it.
# The smallest vm.diskGb and host.diskGb their validators take: below it they name the problem.
_MIN_DISK_GB = 10
_FRONT_DEFAULT_MB = FrontSettings.model_fields["storage_mb"].default


@dataclass(frozen=True)
class Budget:
    """A parsed budget: a size in bytes, or a share of the disk."""

    bytes: int | None = None
    percent: float | None = None

    def resolve(self, disk_bytes: int) -> int:
        if self.bytes is not None:
            return self.bytes
        assert self.percent is not None
        return int(disk_bytes * self.percent / 100)


def parse_budget(value: Any) -> Budget:
    """``20GiB`` / ``500MB`` / ``1073741824`` / ``15%``; ValueError with the reason otherwise."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("expected a size such as 20GiB or 500MB, or a share of the disk like 15%")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(
                "expected a size such as 20GiB or 500MB, or a share of the disk like 15%"
            )
        number, unit = float(match[1]), match[2]
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be more than 0 (a cache with no budget would evict everything)")
    if unit == "%":
        if number > 100:
            raise ValueError("a share of the disk is at most 100%")
        return Budget(percent=number)
    factor = _UNITS.get(unit.upper())
    if factor is None:
        raise ValueError(f"unknown unit {shown(unit)} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    size = int(number * factor)
    if size < MIN_BUDGET_BYTES:
        raise ValueError("at least 64MiB (a few images already take more)")
    return Budget(bytes=size)


def check_budget(value: Any) -> Any:
    """Field validator: the value as written, once it parses."""
    if value is not None:
        parse_budget(value)
    return value


def default_pool_percent(threshold_percent: int) -> int:
    """Share of the disk the caches without a budget of their own divide between them."""
    return max(threshold_percent - DEFAULT_HEADROOM_PERCENT, threshold_percent // 2, 1)


def _get(mapping: Any, key: str) -> Any:
    if not isinstance(mapping, Mapping):
        return None
    snake = re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()
    return mapping.get(key, mapping.get(snake))


def _budgets(
    disk_bytes: int,
    threshold_percent: int,
    registry_budget: Any,
    upstream_budgets: Sequence[Any],
    disk_key: str = "vm.diskGb",
    front_bytes: int = 0,
) -> tuple[list[int], list[str]]:
    """Bytes per cache (in upstream order) and the problems, each naming its key (``disk_key``:
    the cache host's disk, vm.diskGb or host.diskGb). ``front_bytes``: the front's store, on the
    same disk, taken from the default pool and counted against the disk."""
    problems: list[str] = []

    def parsed(key: str, value: Any) -> int | None:
        if value is None:
            return None
        try:
            size = parse_budget(value).resolve(disk_bytes)
        except ValueError:
            return None  # the field's own validator names it
        if size > disk_bytes:
            problems.append(
                f"{key}: {shown(value)} is more than the whole disk "
                f"({disk_key} = {disk_bytes // GIB} GiB)"
            )
            return None
        return size

    common = parsed("registry.cacheBudget", registry_budget)
    own = [parsed(f"upstreams[{i}].cacheBudget", v) for i, v in enumerate(upstream_budgets)]
    if problems:
        return [], problems
    explicit = sum(size for size in own if size is not None)
    shared = [i for i, size in enumerate(own) if size is None]
    if common is not None:
        sizes = [common if size is None else size for size in own]
    else:
        pool = disk_bytes * default_pool_percent(threshold_percent) // 100 - explicit - front_bytes
        if shared and pool < MIN_BUDGET_BYTES * len(shared):
            set_keys = ", ".join(
                f"upstreams[{i}].cacheBudget" for i, size in enumerate(own) if size is not None
            )
            return [], [
                f"{set_keys or 'front.storageMb'}: together they leave the {len(shared)} "
                f"other cache(s) less than "
                f"{MIN_BUDGET_BYTES // 1024**2}MiB each of the "
                f"{default_pool_percent(threshold_percent)}% of {disk_key} the caches share by "
                f"default{' (less front.storageMb)' if front_bytes else ''}: set "
                "registry.cacheBudget or lower these"
            ]
        each = pool // len(shared) if shared else 0
        sizes = [each if size is None else size for size in own]
    if sum(sizes) + front_bytes > disk_bytes:
        keys = "registry.cacheBudget" if common is not None else "upstreams[].cacheBudget"
        front = f" and the front's store ({front_bytes / GIB:.1f} GiB)" if front_bytes else ""
        problems.append(
            f"{keys}: the caches' budgets ({sum(sizes) / GIB:.1f} GiB){front} add up to more "
            f"than the disk ({disk_key} = {disk_bytes // GIB} GiB): the disk would fill before "
            "any cache reached its budget"
        )
    return sizes, problems


def budget_problems(raw: Mapping[str, Any], upstreams: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cross-key checks on raw config (budgets against vm.diskGb and each other)."""
    section = "host" if _get(raw, "host") is not None else "vm"
    disk_gb = _get(_get(raw, section), "diskGb")
    registry = _get(raw, "registry")
    threshold = _get(registry, "diskUsageThresholdPercent")
    if disk_gb is None:
        disk_gb = 100
    if threshold is None:
        threshold = 80
    front_mb = _get(_get(raw, "front"), "storageMb")
    if front_mb is None:
        front_mb = _FRONT_DEFAULT_MB
    if not isinstance(front_mb, int) or isinstance(front_mb, bool) or front_mb <= 0:
        return []  # front.storageMb's own validator names it
    if not isinstance(disk_gb, int) or isinstance(disk_gb, bool) or disk_gb < _MIN_DISK_GB:
        return []  # vm.diskGb's (host.diskGb's) own validator names it
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= 100:
        return []
    _, problems = _budgets(
        disk_gb * GIB,
        threshold,
        _get(registry, "cacheBudget"),
        [_get(u, "cacheBudget") for u in upstreams],
        f"{section}.diskGb",
        front_mb * 1024**2,
    )
    return problems


def cache_budgets(settings: Any) -> dict[str, int]:
    """Container name -> budget in bytes, for every upstream (settings already validated)."""
    sizes, problems = _budgets(
        settings.cache_host.disk_gb * GIB,
        settings.registry.disk_usage_threshold_percent,
        settings.registry.cache_budget,
        [u.cache_budget for u in settings.upstreams],
        front_bytes=settings.front.storage_mb * 1024**2,
    )
    if problems:  # load_settings refuses these; a Settings built by hand may not have been
        raise ValueError("\n".join(problems))
    return {u.container: size for u, size in zip(settings.upstreams, sizes, strict=True)}
