"""The caches' TLS: what ``scripts/vm/registry-tls.sh`` is told, and where the CA lands on nodes.

Pure: no ``import pulumi``. The CA and the server certificate are made ON the registry VM and its
key never leaves it (README: TLS); this module only names the parameters, the paths and the
schedule. What crosses to the nodes is the CA's certificate: public.
"""

from __future__ import annotations

from components.renderers.front_proxy import CONFIG_DIR, TLS_DIR
from components.settings import Settings

TLS_SCRIPT = "vm/registry-tls.sh"
# Installed for cron's renewal (the steps of `pulumi up` send the script itself).
TLS_SCRIPT_PATH = "/usr/local/sbin/registry-tls"
# Hourly: a renewal that fails (the front down, a full disk) is tried again within the hour.
RENEW_MINUTE = 41

# Where a node keeps the CA certificates it trusts for our caches (written by its step before
# the files that name it). Plain containerd: next to the hosts.toml directories, a file
# containerd never reads by itself (it looks up directories). k3s/RKE2: outside the certs.d they
# regenerate, under /etc/rancher for either distribution (one registriesYaml output).
CONTAINERD_CA_NAME = "registry-mirrors-ca.pem"
RANCHER_CA_FILE = "/etc/rancher/registry-mirrors-ca.pem"


def containerd_ca_file(settings: Settings) -> str:
    return f"{settings.containerd.config_path}/{CONTAINERD_CA_NAME}"


def subject_alt_names(settings: Settings) -> list[str]:
    """The server certificate's names: the cache host's IP (the VM's or the existing host's:
    nodes name it by IP; Go checks an IP host against the IP SANs), any other address of it and
    every DNS name the settings give."""
    address = settings.cache_host.address
    others = [f"IP:{ip}" for ip in settings.tls.ip_addresses if ip != address]
    return [f"IP:{address}", *others, *(f"DNS:{name}" for name in settings.tls.dns_names)]


def tls_params(settings: Settings, action: str) -> dict[str, str | int | bool]:
    """registry-tls.sh's parameters for ``action`` (trust, issue)."""
    tls = settings.tls
    return {
        "ACTION": action,
        "GENERATION": tls.ca_generation,
        "TRUST_PREVIOUS": tls.trust_previous_ca,
        "SANS": " ".join(subject_alt_names(settings)),
        "CA_DAYS": tls.ca_days,
        "CERT_DAYS": tls.certificate_days,
        "RENEW_BEFORE_DAYS": tls.renew_before_days,
        "TLS_PORT": settings.upstreams[0].resolved_tls_port,
        "TLS_DIR": TLS_DIR,
        "CONFIG_DIR": CONFIG_DIR,
    }


def renew_cron_line(log_tag: str) -> str:
    """The VM's hourly renewal (system crontab format)."""
    return f"{RENEW_MINUTE} * * * * root {TLS_SCRIPT_PATH} renew 2>&1 | logger -t {log_tag}"
