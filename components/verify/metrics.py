"""Cache health from each mirror's Prometheus /metrics: what it served since its container started,
and with Distribution 3 its hits, misses and bytes pulled from the upstream."""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from typing import Any

from components.verify.check import Check, _size
from components.verify.mirror import _failure, _request

# --- cache health: each mirror's Prometheus /metrics ---------------------------------------------
# Both majors count requests per handler in registry_http_requests_total; only Distribution 3 has
# proxy counters (registry_proxy_{requests,hits,misses,pulled_bytes}_total, per type blob or
# manifest). 2.x keeps its proxy counters in expvar only, and counts every served blob as a hit
# there, so they are not reported.
SERVED_HANDLERS = ("blob", "manifest")
PROXY_COUNTERS = ("requests", "hits", "misses", "pulled_bytes")


@dataclass(frozen=True)
class MirrorMetrics:
    requests: dict[str, float]  # per handler (blob, manifest): what clients asked this mirror
    proxy: dict[str, dict[str, float]] | None  # counter -> type -> value; None: Distribution 2.x

    @property
    def served(self) -> float:
        return sum(self.requests.get(handler, 0.0) for handler in SERVED_HANDLERS)


def parse_metrics(text: str) -> MirrorMetrics:
    """Prometheus text format -> the counters this check reports."""
    requests: dict[str, float] = {}
    proxy: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("registry_"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels_text = name_labels.partition("{")
        labels = dict(
            (key, raw.strip('"'))
            for key, _, raw in (p.partition("=") for p in labels_text.rstrip("}").split(",") if p)
        )
        if name == "registry_http_requests_total":
            handler = labels.get("handler", "")
            requests[handler] = requests.get(handler, 0.0) + float(value)
        elif name.startswith("registry_proxy_") and name.endswith("_total"):
            counter = name.removeprefix("registry_proxy_").removesuffix("_total")
            if counter in PROXY_COUNTERS:
                proxy.setdefault(counter, {})[labels.get("type", "")] = float(value)
    return MirrorMetrics(requests, proxy or None)


def read_metrics(url: str, timeout: float) -> MirrorMetrics:
    with _request(url, "GET", timeout) as response:
        return parse_metrics(response.read().decode())


def describe_metrics(metrics: MirrorMetrics) -> str:
    by_handler = ", ".join(f"{metrics.requests.get(h, 0):.0f} {h}" for h in SERVED_HANDLERS)
    if metrics.served == 0:
        text = "no pulls through this mirror since its container started"
    else:
        text = f"{metrics.served:.0f} requests ({by_handler})"
    if metrics.proxy is None:
        return f"{text}; no hit/miss counters in Distribution 2.x"
    if metrics.served == 0:
        return text
    total = {counter: sum(metrics.proxy.get(counter, {}).values()) for counter in PROXY_COUNTERS}
    blob_hits = metrics.proxy.get("hits", {}).get("blob", 0)
    blob_requests = metrics.proxy.get("requests", {}).get("blob", 0)
    ratio = f", blob hit ratio {blob_hits / blob_requests:.0%}" if blob_requests else ""
    return (
        f"{text}: {total['hits']:.0f} hits, {total['misses']:.0f} misses, "
        f"{_size(total['pulled_bytes'])} pulled from upstream{ratio}"
    )


def check_metrics(upstream: str, mirror: dict[str, Any], timeout: float) -> Check:
    url = mirror.get("metricsUrl")
    container = mirror.get("container", upstream)
    if not url:
        return Check(upstream, "-", "metrics", True, "skipped: no metricsUrl in the outputs")
    try:
        metrics = read_metrics(url, timeout)
    except (urllib.error.URLError, OSError, ValueError) as error:
        detail, advice = _failure(error, container)
        advice = f"Prometheus cannot scrape it either: {advice}"
        return Check(upstream, url, "metrics", False, detail, advice)
    return Check(upstream, url, "metrics", True, describe_metrics(metrics))
