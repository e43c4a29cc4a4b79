"""Sections ``front`` and ``tls``: the one Apache Traffic Server in front of every cache on the VM
(it coalesces concurrent cold blob fetches and terminates TLS; docs/design/front-proxy.md) and
the certificates it serves.

Ports, per upstream (components/settings/upstreams.py): plain HTTP on ``port``, the registry's
metrics on ``metricsPort`` (port + 1), HTTPS on ``tlsPort`` (port + 2), the registry itself on
``127.0.0.1:backendPort`` (port + 10000) behind the front. HTTPS has its own port, so no port
ever changes its scheme while nodes switch.
"""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import Field, field_validator, model_validator

from components.settings.checks import Hostname, _Model
from components.settings.errors import shown


class FrontSettings(_Model):
    """The front's store: what it needs to hold the blobs in flight at one moment."""

    storage_mb: int = Field(
        default=8192,
        ge=64,
        le=1_048_576,
        description="Disk store of the front (MiB, on the cache disk): every blob being fetched "
        "at one moment must fit; ATS reuses it cyclically.",
    )
    ram_cache_mb: int = Field(
        default=64, ge=0, le=65_536, description="RAM cache in front of the store (MiB)."
    )

    @model_validator(mode="after")
    def _ram_within_store(self) -> Self:
        if self.ram_cache_mb > self.storage_mb:
            raise ValueError("ramCacheMb is larger than storageMb")
        return self


class TlsSettings(_Model):
    """HTTPS on every cache, with a CA of its own whose key never leaves the cache host."""

    enabled: bool = Field(
        default=True,
        description="Serve HTTPS on every cache's tlsPort and point every node at it. Off: plain "
        "HTTP only (TLS terminated elsewhere; README).",
    )
    plain_http: bool = Field(
        default=False,
        description="With TLS on, keep serving plain HTTP on `port` after every node has "
        "switched (for consumers that cannot take the CA yet). Off: the plain port refuses "
        "every request (403) once the nodes are switched.",
    )
    dns_names: list[Hostname] = Field(
        default_factory=list,
        description="DNS names of the cache host for the server certificate (its IP is "
        "always in it).",
    )
    ip_addresses: list[str] = Field(
        default_factory=list,
        description="Other addresses the cache host is reached at (a second NIC, a NAT), for "
        "the server "
        "certificate: a client checks the address it dialled against these.",
    )

    @field_validator("ip_addresses")
    @classmethod
    def _ips(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{shown(address)} is not an IP address") from None
        return value

    certificate_days: int = Field(
        default=90, ge=2, le=825, description="Lifetime of the server certificate (days)."
    )
    renew_before_days: int = Field(
        default=30,
        ge=1,
        le=824,
        description="The VM's daily cron renews the certificate when fewer days are left.",
    )
    ca_days: int = Field(default=3650, ge=30, le=36_500, description="Lifetime of the CA (days).")
    ca_generation: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="The CA that issues the server certificate. Raise it to rotate the CA "
        "(README: Rotate the CA).",
    )
    trust_previous_ca: bool = Field(
        default=False,
        description="Nodes also trust CA caGeneration - 1: the overlap of a CA rotation.",
    )
    expiry_warning_days: int = Field(
        default=21,
        ge=1,
        le=824,
        description="scripts/verify.py fails a certificate with fewer days left (the renewal "
        "should have run before).",
    )

    @model_validator(mode="after")
    def _days(self) -> Self:
        problems = []
        if self.renew_before_days >= self.certificate_days:
            problems.append(
                f"renewBeforeDays {self.renew_before_days} must be below certificateDays "
                f"{self.certificate_days} (the certificate would be renewed every day)"
            )
        if self.expiry_warning_days > self.renew_before_days:
            problems.append(
                f"expiryWarningDays {self.expiry_warning_days} must not exceed renewBeforeDays "
                f"{self.renew_before_days} (verify would fail certificates the cron has not "
                "yet had a reason to renew)"
            )
        if self.certificate_days >= self.ca_days:
            problems.append(
                f"certificateDays {self.certificate_days} must be below caDays {self.ca_days}"
            )
        if self.trust_previous_ca and self.ca_generation == 1:
            problems.append("trustPreviousCa needs caGeneration 2 or more (there is no CA 0)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
