"""verify's Proxmox firewall row against a stand-in of the Proxmox API (HTTPS on loopback): the
datacenter firewall off fails (the VM's rules are then not applied), on passes with the VM's own
state, no token skips with how to turn the check on; the token is sent, never shown."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components.settings import Settings, load_settings
from components.verify.proxmox_firewall import check_proxmox_firewall
from tests.integration.front_proc import make_test_ca
from tests.sample import sample_raw
from tests.test_cache_host import host_raw

TOKEN = "root@pam!verify=00000000-1111-2222-3333-444444444444"


@contextlib.contextmanager
def proxmox_api(tmp_path: Path, datacenter: int, vm: int) -> Iterator[tuple[str, list[str]]]:
    """The two firewall option paths verify reads; yields the endpoint and the auth headers."""
    seen: list[str] = []
    answers = {
        "/api2/json/cluster/firewall/options": {"enable": datacenter},
        "/api2/json/nodes/pve/qemu/210/firewall/options": {"enable": vm, "policy_in": "REJECT"},
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = answers.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(json.dumps({"data": body}).encode())

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    ca = make_test_ca(tmp_path / "ca", days=2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.pem)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/", seen
    finally:
        server.shutdown()
        server.server_close()


def _settings(endpoint: str) -> Settings:
    raw = sample_raw()
    raw["proxmox"] = {"endpoint": endpoint, "insecure": True}  # the stand-in's own certificate
    return load_settings(raw)


@pytest.mark.parametrize(
    ("datacenter", "vm", "ok", "detail"),
    [
        (0, 1, False, "datacenter firewall off"),
        (1, 0, False, "VM 210: its firewall is off"),
        (1, 1, True, "datacenter firewall on; VM 210: enabled, input policy REJECT"),
    ],
)
def test_the_row_says_whether_proxmox_applies_the_vms_rules(
    tmp_path: Path, datacenter: int, vm: int, ok: bool, detail: str
) -> None:
    with proxmox_api(tmp_path, datacenter, vm) as (endpoint, seen):
        check = check_proxmox_firewall(_settings(endpoint), {}, timeout=10, token=TOKEN)
    assert (check.ok, check.detail) == (ok, detail)
    assert seen and all(header == f"PVEAPIToken={TOKEN}" for header in seen)
    assert TOKEN not in check.detail + check.advice
    if datacenter == 0:
        assert "pvesh set /cluster/firewall/options --enable 1" in check.advice


def test_without_a_token_the_row_is_skipped_with_how_to_turn_it_on() -> None:
    check = check_proxmox_firewall(_settings("https://pve.lan:8006/"), {}, timeout=1, token="")
    assert check.ok and check.detail.startswith("skipped: set PROXMOX_VE_API_TOKEN")


def test_host_mode_has_no_proxmox_firewall_and_the_row_says_so() -> None:
    """An existing cache host (``host``): no Proxmox VM, no RegistryFirewall. The row passes
    without asking any API (none is configured: a request would have nowhere to go), even with
    a token set; the VM mode with the same token asks (the rows above)."""
    check = check_proxmox_firewall(load_settings(host_raw()), {}, timeout=1, token=TOKEN)
    assert (check.upstream, check.endpoint, check.check, check.ok) == (
        "proxmox", "-", "firewall", True
    )  # fmt: skip
    assert check.detail.startswith("skipped: the caches run on an existing host (host)")
    assert TOKEN not in check.detail + check.advice
