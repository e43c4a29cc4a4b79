"""Section ``upstreams``: one upstream registry per Distribution cache, and the default five."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from components.settings.budget import check_budget
from components.settings.checks import ContainerName, Port, RegistryHost, _Model, _no_credentials

# The ports derived from ``port`` when not set: the registry's metrics, the front's HTTPS port,
# the registry itself on loopback behind the front (settings keys).
METRICS_OFFSET, TLS_OFFSET, BACKEND_OFFSET = 1, 2, 10000

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


class Upstream(_Model):
    """One upstream registry and the Distribution pull-through cache in front of it."""

    host: RegistryHost = Field(description="Registry host as images name it, e.g. ghcr.io.")
    port: Port = Field(description="Port the cache is published on, on the VM.")
    container: ContainerName = Field(description="Container name on the VM.")
    metrics_port: Port | None = Field(default=None, description="Metrics port; default port+1.")
    tls_port: Port | None = Field(
        default=None, description="HTTPS port of the front for this cache; default port+2."
    )
    backend_port: Port | None = Field(
        default=None,
        description="Where the registry container is published, on the VM's loopback only "
        "(the front forwards to it); default port+10000.",
    )
    server: str | None = Field(
        default=None,
        description="Upstream URL; default https://<host> (Docker Hub: registry-1.docker.io).",
    )
    cache_budget: str | int | None = Field(
        default=None,
        description="Most disk this cache may use (20GiB, 500MB, or 15% of vm.diskGb); over it "
        "the hourly job evicts the least recently pulled repositories. Default: "
        "registry.cacheBudget.",
    )

    @field_validator("cache_budget", mode="before")
    @classmethod
    def _cache_budget(cls, value: object) -> object:
        return check_budget(value)

    @field_validator("server")
    @classmethod
    def _server(cls, value: str | None) -> str | None:
        if value is not None:
            # It lands in hosts.toml, the registry config and the mirrors output: all plain text.
            _no_credentials(
                value, "https://HOST[:PORT]", "upstreamCredentials.<host> (a secret) instead"
            )
        if value is not None and not re.match(r"^https?://[^\s/]+/?$", value):
            raise ValueError("expected the root URL of a registry, e.g. https://ghcr.io")
        return value.rstrip("/") if value else value

    @property
    def resolved_metrics_port(self) -> int:
        return self.metrics_port if self.metrics_port is not None else self.port + METRICS_OFFSET

    @property
    def resolved_tls_port(self) -> int:
        return self.tls_port if self.tls_port is not None else self.port + TLS_OFFSET

    @property
    def resolved_backend_port(self) -> int:
        return self.backend_port if self.backend_port is not None else self.port + BACKEND_OFFSET

    @property
    def resolved_server(self) -> str:
        if self.server:
            return self.server
        return DOCKER_HUB_SERVER if self.host == DOCKER_HUB else f"https://{self.host}"


DEFAULT_UPSTREAMS: tuple[Upstream, ...] = (
    Upstream(host="docker.io", port=5000, container="registry"),
    Upstream(host="ghcr.io", port=5010, container="registry-ghcr"),
    Upstream(host="quay.io", port=5020, container="registry-quay"),
    Upstream(host="registry.k8s.io", port=5030, container="registry-k8s"),
    Upstream(host="reg.kyverno.io", port=5040, container="registry-kyverno"),
)
