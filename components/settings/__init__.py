"""The one settings model: every value the program uses, validated once, before any resource.

Pure: no ``import pulumi`` here (tests and ``scripts/render.py`` use it without Pulumi).
Keys in stack config are camelCase (``vmId``); Python attributes are snake_case.
Unknown keys are errors: Distribution and containerd silently ignore typos, so we must not.

One module per section (``proxmox``, ``vm``, ``host``, ``upstreams``, ``registry``, ``nodes``,
``containerd``, ``front`` (with ``tls``), ``node_access``, ``secrets``); the value checks they
share in ``checks``; how a problem is shown in ``errors``; ``model`` joins the sections into
``Settings``; ``schedule`` lays out the GC and restart slots (checked here, rendered by the
maintenance cron file); ``load`` is the entry point.
The names other modules use are imported from here.
"""

from components.settings.checks import check_cron_field, check_host_key
from components.settings.containerd import ContainerdSettings
from components.settings.errors import SHOWN_LENGTH, SettingsError, key_text, secret_name, shown
from components.settings.front import FrontSettings, TlsSettings
from components.settings.host import HostSettings
from components.settings.load import SECRET_KEYS, SECTIONS, load_secrets, load_settings
from components.settings.model import CacheHost, Settings
from components.settings.node_access import DEFAULT_READ_USER, NodeAccessSettings
from components.settings.nodes import Node
from components.settings.proxmox import ProxmoxSettings, ProxmoxSsh
from components.settings.registry import (
    REGISTRY_MAJORS,
    GcSchedule,
    RegistrySettings,
    RestartSchedule,
    Schedule,
    registry_image_major,
)
from components.settings.secrets import Secrets, UpstreamCredentials
from components.settings.upstreams import DEFAULT_UPSTREAMS, DOCKER_HUB, DOCKER_HUB_SERVER, Upstream
from components.settings.vm import CloudImage, VmSettings

__all__ = [
    "DEFAULT_READ_USER",
    "DEFAULT_UPSTREAMS",
    "DOCKER_HUB",
    "DOCKER_HUB_SERVER",
    "REGISTRY_MAJORS",
    "SECRET_KEYS",
    "SECTIONS",
    "SHOWN_LENGTH",
    "CacheHost",
    "CloudImage",
    "ContainerdSettings",
    "FrontSettings",
    "GcSchedule",
    "HostSettings",
    "Node",
    "NodeAccessSettings",
    "ProxmoxSettings",
    "ProxmoxSsh",
    "RegistrySettings",
    "RestartSchedule",
    "Schedule",
    "Secrets",
    "Settings",
    "SettingsError",
    "TlsSettings",
    "Upstream",
    "UpstreamCredentials",
    "VmSettings",
    "check_cron_field",
    "check_host_key",
    "key_text",
    "load_secrets",
    "load_settings",
    "registry_image_major",
    "secret_name",
    "shown",
]
