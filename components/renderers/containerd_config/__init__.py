"""A node's containerd config.toml migrated from ``registry.mirrors`` to ``config_path``.

``migrate`` is the entry point (and says why each step exists); it parses the file per version
(``versions``), converts a version 1 file for containerd 2.x (``v1_to_v2``), finds the mirrors and
TLS settings to carry over (``mirrors``) and edits the document with tomlkit (``toml_edit``).
The names other modules use are imported from here.
"""

from components.renderers.containerd_config.migrate import (
    DEFAULT_CONFIG_PATH,
    MigrationResult,
    carried_registries,
    carried_wildcard,
    migrate_config,
)
from components.renderers.containerd_config.mirrors import (
    NOT_A_REGISTRY,
    MigratedRegistry,
    TlsSettings,
    default_server,
)
from components.renderers.containerd_config.v1_to_v2 import V1_PLUGIN_NAMES, v1_plugin_uri
from components.renderers.containerd_config.versions import (
    BOM,
    REGISTRY_PATHS,
    ConfigParseError,
    parse_containerd_version,
    preferred_config_version,
)

__all__ = [
    "BOM",
    "DEFAULT_CONFIG_PATH",
    "NOT_A_REGISTRY",
    "REGISTRY_PATHS",
    "V1_PLUGIN_NAMES",
    "ConfigParseError",
    "MigratedRegistry",
    "MigrationResult",
    "TlsSettings",
    "carried_registries",
    "carried_wildcard",
    "default_server",
    "migrate_config",
    "parse_containerd_version",
    "preferred_config_version",
    "v1_plugin_uri",
]
