"""config.toml migration: structure parsed back with tomllib, comments, idempotence, errors."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.renderers.containerd_config import (
    REGISTRY_PATHS,
    ConfigParseError,
    MigratedRegistry,
    carried_registries,
    migrate_config,
    parse_containerd_version,
    preferred_config_version,
    v1_plugin_uri,
)

FIXTURES = Path(__file__).parent / "fixtures" / "containerd"
CORPUS = sorted(FIXTURES.glob("*.toml"))
OURS = "/etc/containerd/certs.d"


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _keys(data: Any) -> list[str]:
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.append(key)
            found += _keys(value)
    return found


def _without_registry_changes(data: dict[str, Any], version: int) -> dict[str, Any]:
    """The config minus what the migration may touch: mirrors, configs.*.tls, config_path."""
    data = copy.deepcopy(data)
    for path in REGISTRY_PATHS.values():
        registry = _get(data, path)
        if not isinstance(registry, dict):
            continue
        registry.pop("mirrors", None)
        if path == REGISTRY_PATHS[version]:
            registry.pop("config_path", None)
        for host, config in list((registry.get("configs") or {}).items()):
            config.pop("tls", None)
            if not config:
                del registry["configs"][host]
    return data


def _comments(text: str) -> list[str]:
    return [m.strip() for m in re.findall(r"#[^\n]*", text)]


@pytest.mark.parametrize("fixture", CORPUS, ids=lambda p: p.name)
def test_corpus_migrates_to_config_path_and_keeps_the_rest(fixture: Path) -> None:
    text = fixture.read_text()
    result = migrate_config(text, "1.6.20~ds1")
    before = tomllib.loads(text)
    after = tomllib.loads(result.text)

    version = before.get("version", 1) if before else 2
    assert result.config_version == version
    assert after.get("version", 1) == version, "the file keeps its own version"
    assert "mirrors" not in _keys(after)
    registry = _get(after, REGISTRY_PATHS[version])
    assert registry["config_path"] == OURS
    for host, config in (registry.get("configs") or {}).items():
        assert "tls" not in config, host
    # everything unrelated is untouched, and the other plugin paths too
    if before:
        assert _without_registry_changes(after, version) == _without_registry_changes(
            before, version
        )
    # auth is a credential: kept in the file, never in the summary
    for host, config in (_get(before, (*REGISTRY_PATHS[version], "configs")) or {}).items():
        if "auth" in config:
            assert registry["configs"][host]["auth"] == config["auth"]
            for field in ("password", "auth", "identitytoken"):
                if field in config["auth"]:
                    secret = config["auth"][field]
                    assert all(secret not in line for line in result.summary + result.warnings)


@pytest.mark.parametrize("fixture", CORPUS, ids=lambda p: p.name)
def test_corpus_keeps_every_comment_outside_removed_tables(fixture: Path) -> None:
    text = fixture.read_text()
    result = migrate_config(text, "1.6.20")
    kept = _comments(result.text)
    for comment in _comments(text):
        if "COMMENT-" in comment or comment.startswith("# Registry") or "keep" in comment:
            assert comment in kept, comment


def test_comment_above_a_table_after_a_removed_tls_table_survives() -> None:
    # tomlkit stores this comment inside the .tls table above it (FIELD-NOTES trap)
    text = (FIXTURES / "tls-auth-mirrors.toml").read_text()
    result = migrate_config(text, "1.6.20")
    lines = result.text.splitlines()
    auth = next(i for i, line in enumerate(lines) if ".auth]" in line)
    assert "COMMENT-ABOVE-AUTH" in lines[auth - 1]
    headers = next(i for i, line in enumerate(lines) if ".headers]" in line)
    assert "COMMENT-ABOVE-HEADERS" in lines[headers - 1]


def test_comments_inside_removed_mirror_tables_go_with_them() -> None:
    text = (FIXTURES / "tls-auth-mirrors.toml").read_text()
    result = migrate_config(text, "1.6.20")
    assert "the corporate mirror first" not in result.text


@pytest.mark.parametrize("fixture", CORPUS, ids=lambda p: p.name)
@pytest.mark.parametrize("node", ["1.6.20", "1.7.27", "2.1.3"])
def test_migrating_a_migrated_file_changes_nothing(fixture: Path, node: str) -> None:
    first = migrate_config(fixture.read_text(), node)
    second = migrate_config(first.text, node)
    assert second.text == first.text
    assert second.changed is False
    assert second.migrated == ()


def test_wildcard_mirror_is_dropped_and_reported_not_carried_over() -> None:
    result = migrate_config((FIXTURES / "wildcard-mirror.toml").read_text(), "1.6.20")
    assert result.migrated == ()
    dropped = [line for line in result.summary if "wildcard" in line]
    assert dropped and "http://10.0.20.10:5000" in dropped[0]
    assert "_default" not in result.text


def test_mirrors_tls_and_server_are_carried_over() -> None:
    result = migrate_config((FIXTURES / "tls-auth-mirrors.toml").read_text(), "1.6.20")
    by_host = {m.host: m for m in result.migrated}
    hub = by_host["docker.io"]
    assert hub.endpoints == ("https://mirror.corp.example:5443",)
    assert hub.server == "https://registry-1.docker.io"  # the upstream itself is not a mirror
    tls = dict(hub.endpoint_tls)["https://mirror.corp.example:5443"]
    assert tls.ca == ("/etc/containerd/certs/corp-ca.pem",)
    assert tls.client == (("/etc/containerd/certs/node.pem", "/etc/containerd/certs/node-key.pem"),)
    assert by_host["ghcr.io"].endpoints == (
        "https://mirror.corp.example:5443/ghcr",
        "http://10.0.30.5:5010",
    )
    assert by_host["ghcr.io"].server is None
    assert by_host["myreg.corp.example:5000"] == MigratedRegistry(
        host="myreg.corp.example:5000", server="http://myreg.corp.example:5000"
    )
    assert by_host["harbor.corp.example"].skip_verify is True
    assert "s3cr3t" in result.text  # auth kept in the file ...
    assert not any("s3cr3t" in line for line in result.summary)  # ... never printed


def test_a_saved_original_with_a_byte_order_mark_still_names_its_mirrors() -> None:
    """containerd reads a config.toml that starts with a UTF-8 BOM, so a node may have one; its
    saved original is read again on every later run and must not stop the plan there."""
    text = (FIXTURES / "tls-auth-mirrors.toml").read_text()
    assert carried_registries("\ufeff" + text) == carried_registries(text) != ()


def test_inline_and_dotted_forms_are_removed_and_carried_over() -> None:
    inline = migrate_config((FIXTURES / "inline-tables.toml").read_text(), "1.6.20")
    assert [m.host for m in inline.migrated] == ["docker.io", "quay.io"]
    assert inline.migrated[1].skip_verify is True
    assert tomllib.loads(inline.text)["plugins"]["io.containerd.grpc.v1.cri"]["registry"][
        "configs"
    ] == {"quay.io": {"auth": {"username": "robot", "password": "INLINE-PASSWORD"}}}
    dotted = migrate_config((FIXTURES / "dotted-keys.toml").read_text(), "1.6.20")
    k8s = {m.host: m for m in dotted.migrated}["registry.k8s.io"]
    assert k8s.endpoints == ("http://10.0.20.10:5030",)
    assert k8s.server == "https://registry.k8s.io"
    assert k8s.skip_verify is False


def test_v1_file_stays_v1_with_plugins_cri() -> None:
    result = migrate_config((FIXTURES / "v1-plugins-cri.toml").read_text(), "1.6.20")
    data = tomllib.loads(result.text)
    assert "version" not in data
    assert data["plugins"]["cri"]["registry"] == {"config_path": OURS}
    assert result.config_version == 1
    assert any("version 1" in w for w in result.warnings)


def test_v1_file_on_containerd_2_is_converted_to_v2_keeping_every_setting() -> None:
    # containerd 2.x reads a v1 file without its CRI settings: config_path there would be ignored.
    root = 'root = "/var/lib/containerd"\n'
    disabled = 'disabled_plugins = ["aufs", "io.containerd.snapshotter.v1.zfs"]\n'
    text = (FIXTURES / "v1-plugins-cri.toml").read_text().replace(root, root + disabled)
    result = migrate_config(text, "2.1.9")
    data = tomllib.loads(result.text)
    assert result.config_version == 2 and data["version"] == 2
    assert set(data["plugins"]) == {"io.containerd.grpc.v1.cri"}
    cri = data["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"] == {"config_path": OURS}
    assert cri["containerd"] == {"snapshotter": "overlayfs"}
    assert cri["cni"] == {"bin_dir": "/opt/cni/bin"}
    assert cri["stream_server_address"] == "127.0.0.1"
    assert data["disabled_plugins"] == [
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.zfs",
    ]
    assert data["root"] == "/var/lib/containerd"
    assert "COMMENT-ABOVE-V1-CNI" in result.text
    assert result.summary[0].startswith(
        'converted the version 1 file to version 2 (plugins.cri -> plugins."io.containerd.grpc.'
        'v1.cri"; disabled_plugins: aufs -> io.containerd.snapshotter.v1.aufs)'
    )
    assert result.warnings == ()
    assert not migrate_config(result.text, "2.1.9").changed


def test_explicit_version_1_on_containerd_2_becomes_version_2_in_place() -> None:
    text = '# mine\nversion = 1 # old\n\n[plugins.cri.registry.mirrors."docker.io"]\n  endpoint = ["http://m:1"]\n'
    result = migrate_config(text, "2.1.9")
    assert result.text.startswith("# mine\nversion = 2 # old\n")
    assert tomllib.loads(result.text)["plugins"]["io.containerd.grpc.v1.cri"]["registry"] == {
        "config_path": OURS
    }


def test_v1_file_on_containerd_2_with_dotted_plugin_keys_is_refused() -> None:
    text = '[plugins]\n  cri.registry.mirrors."docker.io".endpoint = ["http://m:5000"]\n'
    with pytest.raises(ConfigParseError, match=r"plugins\.cri is written inline or with dotted "
                       r"keys.*containerd config migrate"):  # fmt: skip
        migrate_config(text, "2.1.9")
    assert migrate_config(text, "1.6.20").config_version == 1  # 1.x reads it as it is


@pytest.mark.parametrize(
    ("name", "uri"),
    [
        ("cri", "io.containerd.grpc.v1.cri"),
        ("opt", "io.containerd.internal.v1.opt"),
        ("diff-service", "io.containerd.service.v1.diff-service"),
        ("windows", "io.containerd.snapshotter.v1.windows"),
        ("something", "io.containerd.grpc.v1.something"),
        ("io.containerd.cri.v1.images", "io.containerd.cri.v1.images"),
    ],
)
def test_v1_plugin_names_follow_containerds_own_renames(name: str, uri: str) -> None:
    assert v1_plugin_uri(name) == uri


def test_tls_settings_of_http_hosts_are_dropped_and_reported() -> None:
    registry = '[plugins."io.containerd.grpc.v1.cri".registry'
    text = "\n".join(
        [
            "version = 2",
            f'{registry}.mirrors."docker.io"]',
            '  endpoint = ["http://10.0.20.10:5000", "https://m.example:5443"]',
            f'{registry}.mirrors."myreg:5000"]',
            '  endpoint = ["http://myreg:5000"]',
            f'{registry}.configs."10.0.20.10:5000".tls]',
            "  insecure_skip_verify = true",
            f'{registry}.configs."m.example:5443".tls]',
            '  ca_file = "/ca.pem"',
            f'{registry}.configs."myreg:5000".tls]',
            "  insecure_skip_verify = false",
            f'{registry}.configs."myreg:5000".auth]',
            '  username = "u"',
            "",
        ]
    )
    result = migrate_config(text, "1.7.24")
    by_host = {m.host: m for m in result.migrated}
    # Only the https:// mirror keeps its TLS settings; the http:// ones would make 1.7+ try
    # HTTPS first on every connection.
    assert [url for url, _ in by_host["docker.io"].endpoint_tls] == ["https://m.example:5443"]
    assert by_host["myreg:5000"] == MigratedRegistry(host="myreg:5000", server="http://myreg:5000")
    assert set(by_host) == {"docker.io", "myreg:5000"}
    dropped = [line for line in result.summary if line.startswith("dropped configs.")]
    assert [line.split(":")[0] for line in dropped] == [
        'dropped configs."10.0.20.10',
        'dropped configs."myreg',
    ]
    assert all("try HTTPS first" in line for line in dropped)
    assert (
        'removed configs."myreg:5000".tls: not carried over, it applied only to http:// '
        "hosts (auth kept)" in result.summary
    )
    assert 'removed configs."m.example:5443".tls: carried over to hosts.toml' in result.summary


def test_v3_file_on_containerd_1_6_is_kept_and_warned() -> None:
    result = migrate_config((FIXTURES / "v3-images.toml").read_text(), "1.6.20")
    data = tomllib.loads(result.text)
    assert data["version"] == 3
    assert data["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"] == OURS
    assert any("version 3" in w and "1.6.20" in w for w in result.warnings)
    on_2x = migrate_config((FIXTURES / "v3-images.toml").read_text(), "2.1.3")
    assert on_2x.warnings == ()


def test_colon_separated_config_path_becomes_one_directory() -> None:
    result = migrate_config((FIXTURES / "colon-config-path.toml").read_text(), "2.2.0")
    registry = tomllib.loads(result.text)["plugins"]["io.containerd.cri.v1.images"]["registry"]
    assert registry["config_path"] == OURS
    assert "# COMMENT-ON-CONFIG-PATH" in result.text
    assert any("/etc/docker/certs.d" in line for line in result.summary)


@pytest.mark.parametrize(("node", "version"), [("1.6.20", 2), ("1.7.27", 2), ("2.1.3", 3)])
def test_empty_file_becomes_a_minimal_file_of_the_preferred_version(
    node: str, version: int
) -> None:
    result = migrate_config("", node)
    data = tomllib.loads(result.text)
    assert data["version"] == version
    assert _get(data, (*REGISTRY_PATHS[version], "config_path")) == OURS
    assert migrate_config(result.text, node).changed is False


def test_custom_config_path_is_used() -> None:
    result = migrate_config("", "1.6.20", "/srv/certs.d")
    assert '"/srv/certs.d"' in result.text
    with pytest.raises(ValueError, match="ONE absolute directory"):
        migrate_config("", "1.6.20", "/a:/b")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version = 2\n[plugins\nx = 1\n", 2),
        ('version = 2\n\n[a]\nb = "unterminated\n', 4),
        ("version = 2\n[a]\nb = 1\nb = 2\n", 4),
        ("version = 7\n", 1),
        ('# c\nversion = "2"\n', 2),
    ],
)
def test_unparsable_input_names_its_line(text: str, line: int) -> None:
    with pytest.raises(ConfigParseError) as caught:
        migrate_config(text, "1.6.20")
    assert caught.value.line == line
    assert f"line {line}" in str(caught.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1.6.20~ds1", (1, 6, 20)),
        ("v2.1.3", (2, 1, 3)),
        ("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3", (1, 6, 20)),
        ("containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da", (1, 7, 27)),
        ("containerd github.com/containerd/containerd/v2 v2.2.0-rc.1 abc", (2, 2, 0)),
    ],
)
def test_parse_containerd_version(given: str, expected: tuple[int, int, int]) -> None:
    assert parse_containerd_version(given) == expected


def test_parse_containerd_version_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="no containerd version"):
        parse_containerd_version("containerd github.com/containerd/containerd")


def test_preferred_config_version() -> None:
    assert preferred_config_version("1.6.20") == 2
    assert preferred_config_version("1.7.0") == 2
    assert preferred_config_version("v2.0.0") == 3


# --- properties ----------------------------------------------------------------------------------

_bare = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda k: k not in {"version", "plugins", "mirrors", "configs", "registry", "config_path"}
)
_value = st.one_of(
    st.integers(-1000, 1000),
    st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
    st.lists(st.integers(0, 9), max_size=3),
)
_hosts = st.sampled_from(["docker.io", "ghcr.io", "quay.io", "myreg:5000", "*", "r.example"])
_endpoint = st.sampled_from(
    ["http://10.0.20.10:5000", "https://m.example", "https://registry-1.docker.io", "http://a:1"]
)


def _toml_value(value: Any) -> str:
    import tomlkit

    return tomlkit.item(value).as_string()


@st.composite
def _configs(draw: st.DrawFn) -> str:
    version = draw(st.sampled_from([1, 2, 3]))
    plugin = '"io.containerd.grpc.v1.cri"' if version == 2 else "cri"
    if version == 3:
        plugin = '"io.containerd.cri.v1.images"'
    lines = [f"version = {version}"] if version > 1 else []
    for key, value in draw(st.dictionaries(_bare, _value, max_size=3)).items():
        lines.append(f"{key} = {_toml_value(value)}")
    tables = draw(
        st.dictionaries(
            _bare.map(lambda name: f"t_{name}"),
            st.dictionaries(_bare, _value, max_size=3),
            max_size=3,
        )
    )
    mirrors = draw(
        st.dictionaries(_hosts, st.lists(_endpoint, max_size=3, unique=True), max_size=3)
    )
    tls_hosts = draw(st.lists(_hosts, max_size=2, unique=True))
    blocks: list[list[str]] = []
    for name, body in tables.items():
        blocks.append(
            [f"# comment {name}", f"[{name}]"]
            + [f"{k} = {_toml_value(v)}" for k, v in body.items()]
        )
    for host, endpoints in mirrors.items():
        blocks.append(
            [
                f"# mirror {host}",
                f'[plugins.{plugin}.registry.mirrors."{host}"]',
                f"endpoint = {_toml_value(endpoints)}",
            ]
        )
    for host in tls_hosts:
        blocks.append(
            [f'[plugins.{plugin}.registry.configs."{host}".tls]', "insecure_skip_verify = true"]
        )
        if draw(st.booleans()):
            blocks.append(
                [
                    f"# auth {host}",
                    f'[plugins.{plugin}.registry.configs."{host}".auth]',
                    'username = "u"',
                ]
            )
    order = draw(st.permutations(range(len(blocks))))
    for index in order:
        lines.append("")
        lines.extend(blocks[index])
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs(), st.sampled_from(["1.6.20", "2.1.3"]))
def test_property_idempotent_and_unrelated_keys_kept(text: str, node: str) -> None:
    result = migrate_config(text, node)
    again = migrate_config(result.text, node)
    assert again.text == result.text and not again.changed
    before, after = tomllib.loads(text), tomllib.loads(result.text)
    version = result.config_version
    assert "mirrors" not in _keys(after)
    assert _get(after, (*REGISTRY_PATHS[version], "config_path")) == OURS
    unrelated_before = {k: v for k, v in before.items() if k != "plugins"}
    unrelated_after = {k: v for k, v in after.items() if k != "plugins"}
    if before:
        if before.get("version", 1) != version:  # a v1 file converted to v2 for containerd 2.x
            assert (before.get("version", 1), version, node) == (1, 2, "2.1.3")
            unrelated_before["version"] = 2
        assert unrelated_after == unrelated_before
    for comment in _comments(text):
        if comment.startswith(("# comment", "# auth")):
            assert comment in result.text
    assert all(m.host != "*" for m in result.migrated)
