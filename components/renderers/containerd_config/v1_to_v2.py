"""A version 1 file converted to version 2 for containerd 2.x, which reads a version 1 file
without its CRI settings (see ``migrate``): containerd's own plugin renames, nothing else.
Pure: no ``import pulumi``.
"""

from __future__ import annotations

import copy
import tomllib
from typing import Any

import tomlkit
from tomlkit.items import Item, Table

from components.renderers.containerd_config.mirrors import _quoted
from components.renderers.containerd_config.toml_edit import _entries
from components.renderers.containerd_config.versions import ConfigParseError, _parse

# containerd's own v1 -> v2 plugin renames (cmd/containerd/server/config/config.go,
# v1MigratePluginName, the same in 1.x and 2.x). Names with a dot are already full URIs.
V1_PLUGIN_NAMES: dict[str, str] = {
    "cri": "io.containerd.grpc.v1.cri",
    "cgroups": "io.containerd.monitor.v1.cgroups",
    "linux": "io.containerd.runtime.v1.linux",
    "scheduler": "io.containerd.gc.v1.scheduler",
    "bolt": "io.containerd.metadata.v1.bolt",
    "task": "io.containerd.runtime.v2.task",
    "opt": "io.containerd.internal.v1.opt",
    "restart": "io.containerd.internal.v1.restart",
    "tracing": "io.containerd.internal.v1.tracing",
    "otlp": "io.containerd.tracing.processor.v1.otlp",
    "aufs": "io.containerd.snapshotter.v1.aufs",
    "btrfs": "io.containerd.snapshotter.v1.btrfs",
    "devmapper": "io.containerd.snapshotter.v1.devmapper",
    "native": "io.containerd.snapshotter.v1.native",
    "overlayfs": "io.containerd.snapshotter.v1.overlayfs",
    "zfs": "io.containerd.snapshotter.v1.zfs",
}


def v1_plugin_uri(name: str) -> str:
    """The full plugin name containerd gives a version 1 plugin name (same fallbacks)."""
    if "." in name:
        return name
    if name in V1_PLUGIN_NAMES:
        return V1_PLUGIN_NAMES[name]
    if name.endswith("-service"):
        return f"io.containerd.service.v1.{name}"
    if name in ("windows", "windows-lcow"):
        return f"io.containerd.snapshotter.v1.{name}"
    return f"io.containerd.grpc.v1.{name}"


# --- version 1 -> 2 (containerd 2.x) --------------------------------------------------------------


def _clear_display_names(item: Item) -> None:
    """Make tomlkit render the headers below ``item`` from their keys (the renamed prefix)."""
    if isinstance(item, Table):
        item.display_name = None
        for _, child in item.value.body:
            _clear_display_names(child)


def _expected_v2(plain: dict[str, Any]) -> dict[str, Any]:
    expected = copy.deepcopy(plain)
    expected["version"] = 2
    if isinstance(expected.get("plugins"), dict):
        expected["plugins"] = {v1_plugin_uri(k): v for k, v in expected["plugins"].items()}
    for key in ("disabled_plugins", "required_plugins"):
        if isinstance(expected.get(key), list):
            expected[key] = [v1_plugin_uri(v) if isinstance(v, str) else v for v in expected[key]]
    return expected


def _convert_v1_to_v2(text: str, plain: dict[str, Any]) -> tuple[str, list[str]]:
    """``text`` (a version 1 file) with containerd's v1 plugin renames and ``version = 2``.

    Only the plugin names change (the tables' contents, comments and layout stay); returns the
    new text and the renames done, e.g. ``plugins.cri -> plugins."io.containerd.grpc.v1.cri"``.
    """
    _, document = _parse(text)
    renames: list[str] = []
    for container, index, full, inline in list(_entries(document, ())):
        if len(full) != 2 or full[0] != "plugins" or v1_plugin_uri(full[1]) == full[1]:
            continue
        key, item = container.body[index]
        if inline is not None or not isinstance(item, Table) or (key and key.is_dotted()):
            raise ConfigParseError(
                f"version 1 file: plugins.{full[1]} is written inline or with dotted keys, which "
                "this tool cannot rename for containerd 2.x; write it as [plugins."
                f"{full[1]}] tables, or convert the file with `containerd config migrate`"
            )
        uri = v1_plugin_uri(full[1])
        container.body[index] = (tomlkit.key(uri), item)
        _clear_display_names(item)
        rename = f"plugins.{full[1]} -> plugins.{_quoted(uri)}"
        if rename not in renames:
            renames.append(rename)
    for name in ("disabled_plugins", "required_plugins"):
        names = document.get(name)
        if isinstance(names, list):
            for position, value in enumerate(list(names)):
                if isinstance(value, str) and v1_plugin_uri(value) != value:
                    names[position] = v1_plugin_uri(value)
                    renames.append(f"{name}: {value} -> {v1_plugin_uri(value)}")
    version = tomlkit.integer(2)
    version.trivia.trail = "\n"
    first = next((i for i, (key, _) in enumerate(document.body) if key is not None), None)
    if "version" in plain:  # an explicit `version = 1`: replaced where it stands
        document["version"] = 2
    elif first is None:
        document.body.append((tomlkit.key("version"), version))
    else:
        if isinstance(document.body[first][1], Table):
            version.trivia.trail = "\n\n"
        document.body.insert(first, (tomlkit.key("version"), version))
    converted = document.as_string()
    try:
        produced = tomllib.loads(converted)
    except tomllib.TOMLDecodeError as error:  # a tomlkit bug: refuse rather than break a node
        raise RuntimeError(f"version 1 -> 2 conversion produced invalid TOML ({error})") from None
    if produced != _expected_v2(plain):
        raise RuntimeError("version 1 -> 2 conversion changed more than plugin names")
    return converted, renames
