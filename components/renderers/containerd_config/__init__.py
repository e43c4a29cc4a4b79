"""A node's containerd config.toml migrated from ``registry.mirrors`` to ``config_path``: see
``migrate`` (the entry point, and why each step exists). The names other modules use are
imported from here."""

from components.renderers.containerd_config.migrate import (
    BOM,
    DEFAULT_CONFIG_PATH,
    NOT_A_REGISTRY,
    REGISTRY_PATHS,
    V1_PLUGIN_NAMES,
    ConfigParseError,
    MigratedRegistry,
    MigrationResult,
    TlsSettings,
    carried_registries,
    default_server,
    migrate_config,
    parse_containerd_version,
    preferred_config_version,
    v1_plugin_uri,
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
    "default_server",
    "migrate_config",
    "parse_containerd_version",
    "preferred_config_version",
    "v1_plugin_uri",
]
