"""The front's renderer (components/renderers/front_proxy.py), inspected as text and argv. The
real varnishd and hitch run the same output in tests/integration/test_front_proxy.py."""

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
    render_hitch_conf,
    render_varnish_dropin,
    render_vcl,
    varnishd_argv,
)
from components.settings import DEFAULT_UPSTREAMS

CACHES = [(u.container, u.port) for u in DEFAULT_UPSTREAMS]


def _options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def _hitch(text: str) -> tuple[list[str], dict[str, str]]:
    """hitch.conf as (frontend ports, top-level key -> value)."""
    ports = re.findall(r'frontend = \{\n    host = "[^"]*"\n    port = "(\d+)"\n\}', text)
    top: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z0-9-]+) = (.*)$", line)
        if match and match.group(1) != "frontend":
            top[match.group(1)] = match.group(2)
    return ports, top


def test_default_front_keeps_each_public_port_and_moves_the_registry_behind_it() -> None:
    front = front_for(CACHES)
    assert [c.port for c in front.caches] == [5000, 5010, 5020, 5030, 5040]
    assert [c.backend_port for c in front.caches] == [15000, 15010, 15020, 15030, 15040]
    assert public_ports(front) == [5000, 5010, 5020, 5030, 5040]
    argv = varnishd_argv(front)
    assert _options(argv, "-a") == [
        "cache_registry=:5000,HTTP",
        "cache_registry_ghcr=:5010,HTTP",
        "cache_registry_quay=:5020,HTTP",
        "cache_registry_k8s=:5030,HTTP",
        "cache_registry_kyverno=:5040,HTTP",
    ]
    # Bounded storages only, and coalesced blobs kept out of the unbounded-by-default Transient.
    assert _options(argv, "-s") == [
        "blobs=file,/var/lib/registry-front/blobs.bin,8192M",
        "Transient=malloc,512M",
    ]
    assert "shortlived=0" in _options(argv, "-p")
    assert _options(argv, "-f") == [front_proxy.VCL_PATH]
    assert "hitch" not in " ".join(argv)


def test_vcl_routes_each_port_to_its_registry_and_looks_up_only_blob_gets() -> None:
    vcl = render_vcl(front_for(CACHES, tls=True))
    assert vcl.startswith("vcl 4.1;")
    for name, port in CACHES:
        backend = "cache_" + name.replace("-", "_")
        assert (
            f'backend {backend} {{\n    .host = "127.0.0.1";\n    .port = "{port + 10000}";' in vcl
        )
        # Plain and TLS port of one cache pick the same registry.
        assert (
            f"(std.port(server.ip) == {port} || std.port(server.ip) == {port + 2}) {{\n"
            f"        set req.backend_hint = {backend};"
        ) in vcl
    assert f'req.method == "GET" && req.url ~ "{BLOB_PATH_RE}"' in vcl
    assert "!req.http.Authorization" in vcl
    assert "return (pass);" in vcl
    # The key: the cache and the path without the query string; never the Host header.
    hash_sub = vcl[vcl.index("sub vcl_hash") :]
    hash_sub = hash_sub[: hash_sub.index("\n}\n")]
    assert "req.http.host" not in hash_sub.lower()
    assert 'regsub(req.url, "\\?.*$", "")' in hash_sub
    assert f"set beresp.ttl = {COALESCE_TTL_S}s;" in vcl
    assert "set beresp.do_stream = true;" in vcl
    assert "set beresp.uncacheable = true;" in vcl


def test_blob_path_pattern() -> None:
    digest = "sha256:" + "a" * 64
    matches = re.compile(BLOB_PATH_RE).match
    assert matches(f"/v2/library/nginx/blobs/{digest}")
    assert matches(f"/v2/a/b/c/blobs/{digest}?ns=docker.io")
    assert not matches(f"/v2/library/nginx/manifests/{digest}")
    assert not matches("/v2/library/nginx/manifests/latest")
    assert not matches("/v2/library/nginx/blobs/sha256:abc")
    assert not matches("/v2/library/nginx/blobs/uploads/")


def test_oversize_blobs_are_passed_with_a_limit_below_the_storage() -> None:
    vcl = render_vcl(front_for(CACHES, storage_mb=1024))
    limit = 512 * 1024 * 1024
    assert f"std.integer(beresp.http.Content-Length, {limit + 1}) <= {limit}" in vcl
    vcl = render_vcl(front_for(CACHES, storage_mb=1024, max_object_mb=100))
    assert f"<= {100 * 1024 * 1024})" in vcl


def test_tls_adds_hitch_with_one_frontend_per_cache_and_a_proxy_listener() -> None:
    front = front_for(CACHES, tls=True)
    argv = varnishd_argv(front)
    assert "hitch=127.0.0.1:6086,PROXY" in _options(argv, "-a")
    ports, top = _hitch(render_hitch_conf(front))
    assert ports == ["5002", "5012", "5022", "5032", "5042"]
    assert top["backend"] == '"[127.0.0.1]:6086"'
    assert top["write-proxy-v2"] == "on"
    assert top["pem-file"] == f'"{front_proxy.PEM_PATH}"'
    assert top["tls-protos"] == "TLSv1.2 TLSv1.3"
    assert top["user"] == '"_hitch"'
    assert public_ports(front) == [5000, 5002, 5010, 5012, 5020, 5022, 5030, 5032, 5040, 5042]
    assert set(front_files(front)) == {
        front_proxy.VCL_PATH,
        front_proxy.VARNISH_DROPIN_PATH,
        front_proxy.HITCH_CONF_PATH,
    }


def test_plain_http_off_leaves_only_the_tls_ports() -> None:
    front = front_for(CACHES, tls=True, plain_http=False)
    assert [a for a in _options(varnishd_argv(front), "-a") if a.endswith(",HTTP")] == []
    assert public_ports(front) == [5002, 5012, 5022, 5032, 5042]
    vcl = render_vcl(front)
    assert "std.port(server.ip) == 5000" not in vcl
    assert "(std.port(server.ip) == 5002) {" in vcl


def test_without_tls_there_is_no_hitch() -> None:
    front = front_for(CACHES)
    assert front_proxy.HITCH_CONF_PATH not in front_files(front)
    with pytest.raises(FrontConfigError, match="hitch needs TLS"):
        render_hitch_conf(front)


def test_dropin_replaces_the_packages_exec_start_and_restarts() -> None:
    text = render_varnish_dropin(front_for(CACHES))
    assert text.count("ExecStart=") == 2  # the empty one clears the package's
    assert "ExecStart=\nExecStart=/usr/sbin/varnishd \\\n    -j unix,user=vcache \\\n" in text
    assert "    -a cache_registry=:5000,HTTP \\\n" in text
    assert "Restart=always" in text


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda f: dataclasses.replace(f, caches=()), "no cache to serve"),
        (
            lambda f: dataclasses.replace(f, plain_http=False),
            "neither plain HTTP nor TLS",
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
        (lambda f: dataclasses.replace(f, max_object_mb=99999), "larger than the storage"),
    ],
)
def test_check_front_refuses(change: object, problem: str) -> None:
    base = front_for(CACHES[:2])
    assert check_front(base) == []
    front = change(base)  # type: ignore[operator]
    problems = check_front(front)
    assert any(problem in line for line in problems), problems
    with pytest.raises(FrontConfigError):
        render_vcl(front)


def test_ipv6_listen_host_is_bracketed() -> None:
    front = Front((FrontCache("registry", 5000, 15000),), listen_host="::1")
    assert "cache_registry=[::1]:5000,HTTP" in _options(varnishd_argv(front), "-a")
