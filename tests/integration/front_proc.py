"""Run the real front (Debian's varnishd, and hitch when TLS is on) with the RENDERED config
(components/renderers/front_proxy.py), on loopback, for tests and benchmarks.

    front = front_for([("registry", free_port())], ...)        # plain values, as rendered
    with running_front(front, workdir) as proc:
        proc.url(cache)           # "http://127.0.0.1:<port>" (or https://...:<tls_port>)
        proc.stat("MAIN.busy_sleep")   # a varnishstat counter
        proc.log()                # varnishd's (and hitch's) output

Only what cannot be the production value changes: varnishd runs without a jail (``-j none``),
in its own working directory (``-n``), with an admin port and secret of its own; hitch runs as
the caller. Processes are stopped by pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.renderers.front_proxy import (
    Front,
    FrontCache,
    render_hitch_conf,
    render_vcl,
    varnishd_argv,
)
from tests.integration.registry_proc import LOOPBACK, free_port, terminate
from tests.prereq import require_binary


class FrontStartError(RuntimeError):
    pass


@dataclass
class FrontProcess:
    front: Front
    workdir: Path
    varnishd: subprocess.Popen[bytes]
    hitch: subprocess.Popen[bytes] | None
    host: str = LOOPBACK

    def url(self, cache: FrontCache, *, tls: bool = False) -> str:
        if tls:
            return f"https://{self.host}:{cache.tls_port}"
        return f"http://{self.host}:{cache.port}"

    def log(self) -> str:
        return "".join(
            path.read_text(errors="replace")
            for path in (self.workdir / "varnishd.log", self.workdir / "hitch.log")
            if path.exists()
        )

    def stats(self) -> dict[str, int]:
        """Every varnishstat counter: name -> value."""
        result = subprocess.run(
            ["varnishstat", "-n", str(self.workdir / "vd"), "-1", "-j"],
            capture_output=True, text=True, check=True, timeout=30,
        )  # fmt: skip
        data = json.loads(result.stdout)
        counters = data.get("counters", data)  # 7.x nests them under "counters"
        return {
            name: int(value["value"])
            for name, value in counters.items()
            if isinstance(value, dict) and "value" in value
        }

    def stat(self, name: str) -> int:
        return self.stats().get(name, 0)

    def stop(self) -> None:
        if self.hitch is not None:
            terminate(self.hitch, grace=5)
        terminate(self.varnishd, grace=10)


def _wait_listening(port: int, host: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FrontStartError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise FrontStartError(f"{host}:{port} not listening after 30 s:\n{log.read_text()[-3000:]}")


def loopback_front(front: Front, workdir: Path) -> Front:
    """``front`` bound to loopback, with a storage file, admin port and secret in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = workdir / "secret"
    secret.write_text(secrets.token_hex(16))
    secret.chmod(0o600)
    return dataclasses.replace(
        front,
        listen_host=LOOPBACK,
        backend_host=LOOPBACK,
        storage_path=str(workdir / "blobs.bin") if front.storage_path else None,
        admin_listen=f"{LOOPBACK}:{free_port()}",
        secret_path=str(secret),
        vcl_path=str(workdir / "front.vcl"),
        proxy_port=free_port() if front.tls else front.proxy_port,
    )


def start_front(front: Front, workdir: Path) -> FrontProcess:
    """Serve ``front`` (rendered, then bound to loopback by ``loopback_front``) until stopped.
    Returns once every public port accepts connections."""
    varnishd = require_binary("varnishd")
    front = loopback_front(front, workdir)
    Path(front.vcl_path).write_text(render_vcl(front))
    argv = varnishd_argv(front, binary=varnishd, jail="none", workdir=str(workdir / "vd"))
    log_path = workdir / "varnishd.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)  # fmt: skip
    proc = FrontProcess(front, workdir, process, None)
    try:
        ports = [c.port for c in front.caches] if front.plain_http else []
        if front.tls:
            ports.append(front.proxy_port)
        for port in ports:
            _wait_listening(port, LOOPBACK, process, log_path)
        if front.tls:
            hitch = require_binary("hitch")
            conf = workdir / "hitch.conf"
            # hitch refuses to run its workers as root: as root, the production user (Debian's
            # hitch package creates it); it reads the pem before dropping privileges.
            user = "_hitch" if os.geteuid() == 0 else None
            conf.write_text(render_hitch_conf(front, user=user))
            with (workdir / "hitch.log").open("ab") as log:
                proc.hitch = subprocess.Popen(
                    [hitch, "--config", str(conf)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            for cache in front.caches:
                assert cache.tls_port is not None
                _wait_listening(cache.tls_port, LOOPBACK, proc.hitch, workdir / "hitch.log")
    except BaseException:
        proc.stop()
        raise
    return proc


@contextlib.contextmanager
def running_front(front: Front, workdir: Path) -> Iterator[FrontProcess]:
    proc = start_front(front, workdir)
    try:
        yield proc
    finally:
        proc.stop()


def vcl_compiles(front: Front, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``varnishd -C``: the rendered VCL through Varnish's own compiler (with its storages)."""
    varnishd = require_binary("varnishd")
    front = loopback_front(front, workdir)
    Path(front.vcl_path).write_text(render_vcl(front))
    # -C needs the storages the VCL names, not their sizes or kind.
    argv = [varnishd, "-C", "-j", "none", "-n", str(workdir / "vd"), "-f", front.vcl_path,
            "-s", "blobs=malloc,16M"]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@dataclass(frozen=True)
class TestCa:
    ca_cert: Path  # what nodes trust (hosts.toml `ca = [...]`)
    pem: Path  # hitch's pem-file: server certificate, then its key
    server_cert: Path


def make_test_ca(workdir: Path, ip: str = LOOPBACK, name: str = "test") -> TestCa:
    """A throwaway CA (openssl) and a server certificate with ``ip`` as its IP SAN, as the
    registry VM's would be: nodes name the VM by IP."""
    openssl = require_binary("openssl")
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = workdir / "ca.key", workdir / "ca.crt"
    key, csr, cert = workdir / "server.key", workdir / "server.csr", workdir / "server.crt"
    ext = workdir / "san.ext"
    ext.write_text(
        f"subjectAltName = IP:{ip}\nextendedKeyUsage = serverAuth\n"
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
    )

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "2", "-subj",
        f"/CN=registry-mirrors {name} CA")  # fmt: skip
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    pem = workdir / "front.pem"
    pem.write_text(cert.read_text() + key.read_text())
    pem.chmod(0o600)
    return TestCa(ca_cert, pem, cert)
