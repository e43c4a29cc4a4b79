"""The front's renderer (components/renderers/front_proxy.py), inspected as text. The real
traffic_server runs the same output in tests/integration/test_front_proxy.py."""

from __future__ import annotations

import dataclasses
import re

import pytest

from components.renderers import front_proxy
from components.renderers.front_proxy import (
    BLOB_PATH_RE,
    COALESCE_TTL_S,
    Front,
    FrontCache,
    FrontConfigError,
    check_front,
    front_files,
    front_for,
    public_ports,
    records,
    render_blob_rules,
    render_records,
    render_remap,
    render_ssl_multicert,
)
from components.settings import DEFAULT_UPSTREAMS

CACHES = [(u.container, u.port) for u in DEFAULT_UPSTREAMS]
CONF = front_proxy.CONFIG_DIR


def _value(front: Front, name: str) -> str | int | float:
    return records(front)[name][1]


def test_default_front_keeps_each_public_port_and_moves_the_registry_behind_it() -> None:
    front = front_for(CACHES)
    assert [c.port for c in front.caches] == [5000, 5010, 5020, 5030, 5040]
    assert [c.backend_port for c in front.caches] == [15000, 15010, 15020, 15030, 15040]
    assert public_ports(front) == [5000, 5010, 5020, 5030, 5040]
    # Every address, IPv4 and IPv6; no TLS port.
    assert _value(front, "proxy.config.http.server_ports") == (
        "5000 5000:ipv6 5010 5010:ipv6 5020 5020:ipv6 5030 5030:ipv6 5040 5040:ipv6"
    )
    remap = render_remap(front)
    for port in (5000, 5010, 5020, 5030, 5040):
        # Any name the node uses for the VM; the port picks the registry.
        assert f"regex_map http://^.*$:{port} http://127.0.0.1:{port + 10000} " in remap
    assert "https://" not in remap
    assert _value(front, "proxy.config.admin.user_id") == "trafficserver"
    # Remap plugins dlopened where installed, not copied under /run (noexec on Debian).
    assert _value(front, "proxy.config.plugin.dynamic_reload_mode") == 0
    assert front_proxy.render_storage(front) == "/var/lib/registry-front/cache.db 8192M\n"


def test_records_coalesce_with_read_while_writer_and_keep_blobs_one_second() -> None:
    front = front_for(CACHES)
    rec = records(front)
    # The four read-while-writer settings ATS's docs require.
    assert rec["proxy.config.cache.enable_read_while_writer"] == ("INT", 1)
    assert rec["proxy.config.http.background_fill_active_timeout"] == ("INT", 0)
    assert rec["proxy.config.http.background_fill_completed_threshold"] == ("FLOAT", 0.0)
    assert rec["proxy.config.cache.max_doc_size"] == ("INT", 0)
    # Waiters retry the read (READ_RETRY) for as long as the first byte may take.
    assert rec["proxy.config.http.cache.open_write_fail_action"] == ("INT", 5)
    retries = rec["proxy.config.http.cache.max_open_read_retries"][1]
    interval = rec["proxy.config.http.cache.open_read_retry_time"][1]
    assert isinstance(retries, int) and isinstance(interval, int)
    assert retries * interval == front.first_byte_timeout_s * 1000
    for name in ("heuristic_min_lifetime", "heuristic_max_lifetime", "guaranteed_max_lifetime"):
        assert rec[f"proxy.config.http.cache.{name}"] == ("INT", COALESCE_TTL_S)
    assert rec["proxy.config.http.negative_caching_enabled"] == ("INT", 0)
    assert rec["proxy.config.http.connect_attempts_max_retries"] == ("INT", 0)
    assert rec["proxy.config.http.down_server.cache_time"] == ("INT", 0)
    text = render_records(front)
    assert "CONFIG proxy.config.http.background_fill_completed_threshold FLOAT 0.000000\n" in text
    assert "CONFIG proxy.config.cache.enable_read_while_writer INT 1\n" in text


def test_only_blob_gets_without_credentials_use_the_cache() -> None:
    rules = render_blob_rules()
    assert "cond %{METHOD} =GET [NOT,OR]" in rules
    assert "cond %{CLIENT-HEADER:Authorization} /./ [OR]" in rules
    assert "cond %{CLIENT-URL:PATH} /^v2\\/.+\\/blobs\\/sha256:[0-9a-f]{64}$/ [NOT]" in rules
    assert "    set-config proxy.config.http.cache.http 0" in rules
    # An unreachable registry is a 503, as before the front.
    assert "cond %{STATUS} =502\n    set-status 503" in rules
    remap = render_remap(front_for(CACHES))
    for line in remap.splitlines()[1:]:
        # The rules on every cache's rule, and a key without the query string (?ns=).
        # By name: ATS reads it from its config directory (front.sh checks a staged copy).
        assert f"@plugin=header_rewrite.so @pparam={front_proxy.BLOB_RULES_NAME} " in line
        assert "@plugin=cachekey.so @pparam=--remove-all-params=true" in line


def test_blob_path_pattern() -> None:
    digest = "sha256:" + "a" * 64
    matches = re.compile(BLOB_PATH_RE).match
    assert matches(f"/v2/library/nginx/blobs/{digest}")
    assert matches(f"/v2/a/b/c/blobs/{digest}?ns=docker.io")
    assert not matches(f"/v2/library/nginx/manifests/{digest}")
    assert not matches("/v2/library/nginx/manifests/latest")
    assert not matches("/v2/library/nginx/blobs/sha256:abc")
    assert not matches("/v2/library/nginx/blobs/uploads/")
    # header_rewrite's form of it: the path without its leading slash and query.
    hrw = re.search(r"CLIENT-URL:PATH\} /(.*)/ \[NOT\]", render_blob_rules())
    assert hrw is not None
    hrw_re = re.compile(hrw.group(1).replace("\\/", "/"))
    assert hrw_re.match(f"v2/library/nginx/blobs/{digest}")
    assert not hrw_re.match("v2/library/nginx/manifests/latest")


def test_tls_is_the_same_process_one_port_per_cache() -> None:
    front = front_for(CACHES, tls=True)
    ports = str(_value(front, "proxy.config.http.server_ports")).split()
    assert "5002:ssl" in ports and "5002:ssl:ipv6" in ports and "5000" in ports
    remap = render_remap(front)
    # Plain and TLS port of one cache: the same registry (the same key).
    assert "regex_map http://^.*$:5000 http://127.0.0.1:15000 " in remap
    assert "regex_map https://^.*$:5002 http://127.0.0.1:15000 " in remap
    # The certificate is the VM's certificate script's: it writes ssl_multicert.config.
    assert front.managed_certificate
    assert _value(front, "proxy.config.ssl.TLSv1") == 0
    assert _value(front, "proxy.config.ssl.TLSv1_1") == 0
    assert public_ports(front) == [5000, 5002, 5010, 5012, 5020, 5022, 5030, 5032, 5040, 5042]
    assert set(front_files(front)) == {
        f"{CONF}/records.config",
        f"{CONF}/remap.config",
        f"{CONF}/{front_proxy.BLOB_RULES_NAME}",
        f"{CONF}/{front_proxy.PLAIN_OFF_RULES_NAME}",
        f"{CONF}/storage.config",
        f"{CONF}/ip_allow.yaml",
        f"{CONF}/plugin.config",
        f"{CONF}/{front_proxy.STATS_CONFIG_NAME}",
    }


def test_plain_http_off_keeps_the_listener_and_refuses_every_request_on_it() -> None:
    """The end of the HTTP -> HTTPS switch changes remap rules only (a reload, no connection
    cut): the plain port stays a listener (ATS reads those at start) and answers 403."""
    serving = front_for(CACHES, tls=True)
    front = front_for(CACHES, tls=True, plain_http=False)
    assert _value(front, "proxy.config.http.server_ports") == _value(
        serving, "proxy.config.http.server_ports"
    )
    assert public_ports(front) == public_ports(serving)
    remap = render_remap(front).splitlines()
    refuse = f"@plugin=header_rewrite.so @pparam={front_proxy.PLAIN_OFF_RULES_NAME}"
    assert f"regex_map http://^.*$:5000 http://127.0.0.1:15000 {refuse}" in remap
    assert any(line.startswith("regex_map https://^.*$:5002 ") and "cachekey" in line
               for line in remap)  # fmt: skip
    assert front_proxy.render_plain_off_rules().splitlines()[-1] == "set-status 403"


def test_without_tls_no_certificate_is_loaded() -> None:
    front = front_for(CACHES)
    assert render_ssl_multicert(front) == "# No TLS.\n"
    assert front_files(front)[f"{CONF}/ssl_multicert.config"] == "# No TLS.\n"
    assert ":ssl" not in str(_value(front, "proxy.config.http.server_ports"))


def test_counters_only_for_loopback() -> None:
    files = front_files(front_for(CACHES))
    assert files[f"{CONF}/{front_proxy.STATS_CONFIG_NAME}"] == (
        f"path={front_proxy.STATS_PATH}\nallow_ip=127.0.0.1\nallow_ip6=::1\n"
    )
    assert files[f"{CONF}/plugin.config"].startswith("stats_over_http.so --integer-counters ")


def test_every_container_name_the_settings_accept_renders() -> None:
    """The settings take Docker's container names ('0', 'cache.v2'); the front names its caches
    after them (found by Hypothesis in tests/test_stack_file.py: a stack the settings accepted
    raised FrontConfigError)."""
    from components.settings.checks import _CONTAINER_NAME

    base = front_for(CACHES)
    for name in ("0", "cache.v2", "Registry_1"):
        assert _CONTAINER_NAME.match(name)
        front = dataclasses.replace(base, caches=(dataclasses.replace(base.caches[0], name=name),))
        assert check_front(front) == [], name
        assert front_files(front)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda f: dataclasses.replace(f, caches=()), "no cache to serve"),
        (
            lambda f: dataclasses.replace(f, plain_http=False),
            "neither plain HTTP nor TLS",
        ),
        (
            lambda f: dataclasses.replace(f, pem_file="/x.pem", managed_certificate=True),
            "one names the PEM",
        ),
        (
            lambda f: dataclasses.replace(
                f, caches=(f.caches[0], dataclasses.replace(f.caches[1], port=5000))
            ),
            "registry-ghcr HTTP: port 5000 is already registry HTTP",
        ),
        (
            lambda f: dataclasses.replace(
                f, caches=(dataclasses.replace(f.caches[0], backend_port=5010), f.caches[1])
            ),
            "registry backend: port 5010 is already registry-ghcr HTTP",
        ),
        (
            lambda f: dataclasses.replace(f, pem_file="/x.pem"),
            "cache 'registry': TLS is on but it has no tls_port",
        ),
        (
            lambda f: dataclasses.replace(
                f, caches=(dataclasses.replace(f.caches[0], name="bad name"),)
            ),
            "not a name",
        ),
        (lambda f: dataclasses.replace(f, storage_mb=32), "storage_mb below 64"),
        (lambda f: dataclasses.replace(f, ram_cache_mb=99999), "larger than the storage"),
    ],
)
def test_check_front_refuses(change: object, problem: str) -> None:
    base = front_for(CACHES[:2])
    assert check_front(base) == []
    front = change(base)  # type: ignore[operator]
    problems = check_front(front)
    assert any(problem in line for line in problems), problems
    with pytest.raises(FrontConfigError):
        render_records(front)
    with pytest.raises(FrontConfigError):
        render_remap(front)


def test_a_listen_host_binds_each_port_to_it() -> None:
    front = Front((FrontCache("registry", 5000, 15000),), listen_host="::1")
    assert _value(front, "proxy.config.http.server_ports") == "5000:ipv6:ip-in=[::1]"
    front = Front((FrontCache("registry", 5000, 15000),), listen_host="10.0.20.10")
    assert _value(front, "proxy.config.http.server_ports") == "5000:ip-in=10.0.20.10"
