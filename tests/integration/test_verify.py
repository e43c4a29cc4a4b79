"""scripts/verify.py against real local registries of both majors: mirrors with traffic, one with
none, a dead one; and the registry VM's cache disk over real SSH (a test host in a netns).

The metrics rows are what the README shows (see README: Operating it).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components.renderers.front_proxy import Front, FrontCache
from components.renderers.registry_config import render_registry_config
from components.settings import DEFAULT_UPSTREAMS, RegistrySettings, Upstream
from tests.integration.front_proc import TestCa, make_test_ca, running_front
from tests.integration.oci_image import build_multiarch_image
from tests.integration.registry_proc import (
    RegistryProcess,
    free_port,
    plain_registry_config,
    start_registry,
)
from tests.integration.testhost import node_host
from tests.prereq import require_binary, require_root
from tests.sample import REGISTRY_IMAGES as IMAGES

ROOT = Path(__file__).resolve().parents[2]
VERIFY = ROOT / "scripts" / "verify.py"

pytestmark = pytest.mark.integration

# docker.io: Distribution 3, pulled through twice (misses, then hits); ghcr.io: 2.8, pulled
# through once; quay.io: Distribution 3, never used; registry.k8s.io: nothing listens.
HUB, GHCR, QUAY, K8S = DEFAULT_UPSTREAMS[:4]


@dataclass
class Mirrors:
    upstream: RegistryProcess
    proxies: dict[str, RegistryProcess]
    work: Path

    def outputs(self, **extra: object) -> dict:
        """The stack's `mirrors` output shape, pointed at the local registries."""
        mirrors = {
            host: {
                "endpoint": proxy.url,
                "container": container,
                "metricsUrl": proxy.metrics_url,
            }
            for (host, container), proxy in (
                ((h, c), self.proxies[h])
                for h, c in ((HUB.host, HUB.container), (GHCR.host, GHCR.container),
                             (QUAY.host, QUAY.container))
            )
        }  # fmt: skip
        dead = free_port()
        mirrors[K8S.host] = {
            "endpoint": f"http://127.0.0.1:{dead}",
            "container": K8S.container,
            "metricsUrl": f"http://127.0.0.1:{dead + 1}/metrics",
        }
        return {"mirrors": mirrors, **extra}


def _skopeo(*args: str) -> None:
    subprocess.run(
        ["skopeo", "--insecure-policy", *args], check=True, capture_output=True, timeout=120
    )


def _proxy(upstream: Upstream, major: int, origin: RegistryProcess, work: Path) -> RegistryProcess:
    registry = RegistrySettings(image=IMAGES[major])
    config = yaml.safe_load(render_registry_config(upstream, registry))
    config["storage"]["filesystem"]["rootdirectory"] = str(work / f"{upstream.container}-data")
    config["proxy"]["remoteurl"] = origin.url
    return start_registry(config, work / upstream.container, major=major)


@pytest.fixture
def mirrors(tmp_path: Path) -> Iterator[Mirrors]:
    """Fresh per test: the counters start from what the fixture's own pulls did."""
    require_binary("skopeo")
    work = tmp_path / "registries"
    upstream = start_registry(plain_registry_config(work / "upstream-data"), work / "upstream")
    proxies: dict[str, RegistryProcess] = {}
    try:
        image = build_multiarch_image(work / "layout", "1")
        for repository in ("library/probe", "org/tool"):
            _skopeo("copy", "--all", "--dest-tls-verify=false", image.oci_ref,
                    f"docker://{upstream.address}/{repository}:1")  # fmt: skip
        proxies[HUB.host] = _proxy(HUB, 3, upstream, work)
        proxies[GHCR.host] = _proxy(GHCR, 2, upstream, work)
        proxies[QUAY.host] = _proxy(QUAY, 3, upstream, work)
        # What nodes would do: pull through the mirrors (Docker Hub twice: misses, then hits).
        for run in (1, 2):
            _skopeo("copy", "--all", "--src-tls-verify=false",
                    f"docker://{proxies[HUB.host].address}/library/probe:1",
                    f"oci:{work}/pulled-{run}:x")  # fmt: skip
        ghcr = proxies[GHCR.host].address
        _skopeo("copy", "--all", "--src-tls-verify=false",
                f"docker://{ghcr}/org/tool:1", f"oci:{work}/ghcr:x")  # fmt: skip
        yield Mirrors(upstream, proxies, work)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        upstream.stop()


def _verify(tmp_path: Path, outputs: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return subprocess.run(
        [sys.executable, str(VERIFY), "--outputs", str(path), "--timeout", "5", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _row(stdout: str, target: str, check: str) -> str:
    [row] = [line for line in stdout.splitlines() if line.split()[:1] == [target]
             and f"  {check}  " in line]  # fmt: skip
    return row


def test_working_mirror_passes_and_resolves_through_the_proxy(mirrors: Mirrors, tmp_path: Path):
    outputs = mirrors.outputs()
    outputs["mirrors"] = {HUB.host: outputs["mirrors"][HUB.host]}
    result = _verify(tmp_path, outputs, "--image", "docker.io=library/probe:1", "--no-vm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "library/probe:1 -> sha256:" in result.stdout
    assert "all 3 checks passed" in result.stdout
    # The manifest really went through the proxy (it logs the request).
    assert "/v2/library/probe/manifests/1" in mirrors.proxies[HUB.host].log()


def test_metrics_show_hits_per_major_a_mirror_without_pulls_and_a_dead_one(
    mirrors: Mirrors, tmp_path: Path
):
    result = _verify(
        tmp_path, mirrors.outputs(),
        "--image", "docker.io=library/probe:1", "--image", "ghcr.io=org/tool:1",
        "--image", "quay.io=org/tool:1", "--no-vm",
    )  # fmt: skip
    # Shown in the README (Operating it): keep the scenario and the wording in step.
    print(result.stdout + result.stderr)
    assert result.returncode == 1, result.stdout + result.stderr
    hub = _row(result.stdout, HUB.host, "metrics")
    # Two pulls of an index (3 manifests, 4 blobs each): the first missed, the second hit.
    assert " ok " in hub
    assert "14 requests (8 blob, 6 manifest): 7 hits, 7 misses, " in hub, hub
    assert "pulled from upstream, blob hit ratio 50%" in hub, hub
    ghcr = _row(result.stdout, GHCR.host, "metrics")
    assert " ok " in ghcr
    assert "7 requests (4 blob, 3 manifest); no hit/miss counters in Distribution 2.x" in ghcr
    quay = _row(result.stdout, QUAY.host, "metrics")
    assert " ok " in quay and "no pulls through this mirror since its container started" in quay
    dead = _row(result.stdout, K8S.host, "metrics")
    assert "FAIL" in dead and "unreachable" in dead
    assert "Prometheus cannot scrape it either" in result.stderr
    assert f"docker ps -a --filter name={K8S.container}" in result.stderr
    # The dead mirror's metrics and API checks fail; the others pass.
    assert "2 check(s) failed" in result.stderr


def test_failing_mirror_and_missing_image_fail_with_advice(mirrors: Mirrors, tmp_path: Path):
    outputs = mirrors.outputs()
    outputs["mirrors"] = {h: outputs["mirrors"][h] for h in (HUB.host, K8S.host)}
    result = _verify(tmp_path, outputs, "--image", "docker.io=library/absent:1", "--no-vm")
    assert result.returncode == 1
    table = result.stdout
    assert "registry.k8s.io" in table and "FAIL" in table and "unreachable" in table
    assert "library/absent:1: HTTP 404" in table
    assert f"docker ps -a --filter name={K8S.container}" in result.stderr
    assert "3 check(s) failed" in result.stderr  # dead: metrics + api; hub: manifest 404


def test_bad_outputs_exit_2(tmp_path: Path):
    result = _verify(tmp_path, {"mirrors": {}})
    assert result.returncode == 2
    assert "mirrors" in result.stderr


def test_without_a_registry_vm_output_the_disk_check_is_skipped(mirrors: Mirrors, tmp_path: Path):
    outputs = mirrors.outputs()
    outputs["mirrors"] = {QUAY.host: outputs["mirrors"][QUAY.host]}
    result = _verify(tmp_path, outputs, "--image", "quay.io=org/tool:1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped: no registryVm in the outputs" in _row(result.stdout, "registry-vm", "disk")


def test_vm_cache_disk_over_ssh_against_the_threshold(mirrors: Mirrors, tmp_path: Path):
    """The registry VM is a test host (netns + sshd, its own /var/lib): verify.py logs in as the
    outputs say and runs the maintenance script's disk check there."""
    require_root()
    for binary in ("ip", "unshare", "sshd", "ssh", "ssh-keygen"):
        require_binary(binary)
    with node_host(tmp_path) as vm:
        data = vm.root / "node" / "var-lib" / "registry"
        for container, size in ((HUB.container, 2_000_000), (GHCR.container, 300_000)):
            (data / container / "docker").mkdir(parents=True)
            (data / container / "docker" / "blob").write_bytes(b"x" * size)
        # What the maintenance's weekly GC left on the VM (scripts/vm/cache-budget.sh).
        state = vm.root / "node" / "var-lib" / "registry-maintenance" / HUB.container
        state.mkdir(parents=True)
        (state / "last-gc").write_text(f"at={int(time.time()) - 7200}\nkind=gc\ndown_seconds=12\n")
        # A caller's own options cannot loosen the check: the pin comes first (first value wins).
        ssh = [f"--ssh-option=-i{vm.key}", "--ssh-option=-oStrictHostKeyChecking=no"]
        outputs = mirrors.outputs()
        outputs["mirrors"] = {QUAY.host: outputs["mirrors"][QUAY.host]}
        results = {}
        for threshold in (100, 1):
            outputs["registryVm"] = {
                "address": vm.node_address,
                "sshUser": "root",
                "diskUsageThresholdPercent": threshold,
                "cacheBudgets": {HUB.container: 5_000_000},
                "sshHostPublicKey": vm.host_public_key,
            }
            results[threshold] = _verify(tmp_path, outputs, "--image", "quay.io=org/tool:1", *ssh)
        # The key the deploy exported is the only one accepted (no known_hosts file is read or
        # written on this machine); outputs without one: the VM is not contacted at all.
        other = tmp_path / "other_host_key"
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)]
        subprocess.run(keygen, check=True)
        for name, key in (
            ("other key", " ".join(Path(f"{other}.pub").read_text().split()[:2])),
            ("no key", None),
        ):
            outputs["registryVm"] = {
                "address": vm.node_address,
                "sshUser": "root",
                "diskUsageThresholdPercent": 100,
                **({"sshHostPublicKey": key} if key else {}),
            }
            results[name] = _verify(tmp_path, outputs, "--image", "quay.io=org/tool:1", *ssh)
        sshd_log = (vm.root / "sshd.log").read_text()
    assert results["other key"].returncode == 1
    other_row = _row(results["other key"].stdout, "registry-vm", "disk")
    assert "FAIL" in other_row and "Host key verification failed" in other_row, other_row
    assert results["no key"].returncode == 1
    assert "no sshHostPublicKey in the registryVm output" in _row(
        results["no key"].stdout, "registry-vm", "disk"
    )
    # Two successful logins (the thresholds); the other key and no key never authenticated.
    assert sshd_log.count("Accepted publickey") == 2, sshd_log
    ok = results[100]
    assert ok.returncode == 0, ok.stdout + ok.stderr
    row = _row(ok.stdout, "registry-vm", "disk")
    assert f"root@{vm.node_address}" in row
    # The VM's own /var/lib/registry (the test host's private /var/lib), each cache's size.
    assert "/var/lib/registry" in row and "(threshold 100%)" in row
    # du counts the directories' own blocks too.
    sizes = {name: float(kb) for name, kb in re.findall(r"(registry[-a-z]*) ([0-9.]+) kB", row)}
    assert "registry 2.0 MB" in row and 300 <= sizes["registry-ghcr"] < 330, row
    # Per cache: its size against the deployed budget, and its last GC's downtime.
    hub = _row(ok.stdout, "registry-vm", HUB.container)
    assert "cache budget" in hub and "2.0 MB of 5.0 MB budget" in hub, hub
    assert "last GC down 12s (2h ago)" in hub and "ok" in hub, hub
    assert "no budget yet" in _row(ok.stdout, "registry-vm", GHCR.container)
    crossed = results[1]
    assert crossed.returncode == 1
    assert "FAIL" in _row(crossed.stdout, "registry-vm", "disk")
    assert "registry.cacheBudget" in crossed.stderr


# --- TLS: the handshake as a node makes it, the names, the days left ---------------------------
@pytest.mark.parametrize(
    ("case", "served", "trusted", "result"),
    [
        ("valid", {"days": 90}, "same", "ok"),
        ("renewal-missed", {"days": 5}, "same", "fewer than 21"),
        ("expired", {"window": ("20200101000000Z", "20200201000000Z")}, "same",
         "TLS: certificate has expired"),
        ("other-ca", {"days": 90}, "other", "TLS: unable to get local issuer certificate"),
    ],
)  # fmt: skip
def test_tls_row_reports_the_certificate_before_it_bites(
    mirrors: Mirrors, tmp_path: Path, case: str, served: dict, trusted: str, result: str
) -> None:
    """verify trusts exactly the CA in the `tls` output, as nodes do: a certificate with fewer
    days left than tls.expiryWarningDays fails (the hourly renewal is not working) while it still
    serves; an expired one, or one from another CA (a VM recreated, the nodes not yet updated:
    they would bypass the cache), fails the handshake with the reason."""
    ca = make_test_ca(tmp_path / "ca", **served)
    trust = ca if trusted == "same" else make_test_ca(tmp_path / "other", name="other", days=90)
    proxy = mirrors.proxies[HUB.host]
    front = Front((FrontCache("registry", free_port(), proxy.port, free_port()),),
                  pem_file=str(ca.pem), plain_http=False, storage_mb=128)  # fmt: skip
    # traffic_server refuses to start with an expired certificate ("failed to load SSL
    # certificate file"): the one that expired while it ran is served by a bare TLS socket.
    tls_port = front.caches[0].tls_port
    assert tls_port is not None
    serving = (
        _bare_tls_server(ca, tls_port)
        if case == "expired"
        else running_front(front, tmp_path / "front")
    )
    with serving:
        outputs = mirrors.outputs(tls={"enabled": True, "expiryWarningDays": 21,
                                       "caCertificates": trust.ca_cert.read_text()})  # fmt: skip
        https = f"https://127.0.0.1:{tls_port}"
        outputs["mirrors"] = {HUB.host: {**outputs["mirrors"][HUB.host], "endpoint": https}}
        checked = _verify(tmp_path, outputs, "--image", "docker.io=library/probe:1", "--no-vm")
    row = _row(checked.stdout, HUB.host, "tls")
    if result == "ok":
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert " ok " in row and "IP Address 127.0.0.1; " in row and "days left" in row
        assert "library/probe:1 -> sha256:" in checked.stdout  # the API over the same TLS
    else:
        assert checked.returncode == 1, checked.stdout + checked.stderr
        assert "FAIL" in row and result in row, row
    if case == "other-ca":
        assert "nodes trusting that CA bypass this cache" in checked.stderr


@contextlib.contextmanager
def _bare_tls_server(ca: TestCa, port: int) -> Iterator[None]:
    """Handshakes with ``ca``'s server certificate on 127.0.0.1:``port`` until the block ends."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.pem)
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(connection, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
