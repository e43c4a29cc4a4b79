"""Run the real front (Debian's Apache Traffic Server, ``traffic_server``) with the RENDERED
config (components/renderers/front_proxy.py), on loopback, for tests and benchmarks.

    front = Front((FrontCache("registry", free_port(), backend_port),), ...)  # plain values
    with running_front(front, workdir) as proc:
        proc.url(cache)           # "http://127.0.0.1:<port>" (or https://...:<tls_port>)
        proc.stat("proxy.process.http.cache_hit_rww")   # an ATS counter
        proc.log()                # traffic_server's output and diags.log

Only what cannot be the production value changes: the files go to ``workdir/etc`` (a runroot
points traffic_server at them instead of /etc/trafficserver), the disk store is a file in
``workdir``, it stays the caller's user, binds loopback, uses two threads (2 shared cores) and
syncs its counters every 100 ms so a test reads them right after the requests. The package's
other config files are copied as they are. The process is stopped by pid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from components.renderers.front_proxy import (
    FRONT_SCRIPT,
    STATS_PATH,
    Front,
    FrontCache,
    check_front,
    front_bundle,
    front_files,
    front_params,
)
from components.renderers.shell import SCRIPTS_DIR, remote_command
from components.renderers.tls import TLS_SCRIPT
from tests.integration.registry_proc import LOOPBACK, terminate
from tests.prereq import require_binary

PACKAGE_CONFIG = Path("/etc/trafficserver")


class FrontStartError(RuntimeError):
    pass


@dataclass
class FrontProcess:
    front: Front
    workdir: Path
    process: subprocess.Popen[bytes]
    host: str = LOOPBACK

    def url(self, cache: FrontCache, *, tls: bool = False) -> str:
        if tls:
            return f"https://{self.host}:{cache.tls_port}"
        return f"http://{self.host}:{cache.port}"

    def log(self) -> str:
        return "".join(
            path.read_text(errors="replace")
            for path in (self.workdir / "traffic_server.out", self.workdir / "log" / "diags.log")
            if path.exists()
        )

    def stats(self) -> dict[str, int]:
        """Every numeric ATS counter: name -> value (stats_over_http, from loopback)."""
        time.sleep(0.3)  # two counter syncs (raw_stat_sync_interval_ms = 100)
        cache = self.front.caches[0]
        if self.front.plain_http:
            url = f"http://{self.host}:{cache.port}/{STATS_PATH}"
            opener = urllib.request.build_opener()
        else:
            url = f"https://{self.host}:{cache.tls_port}/{STATS_PATH}"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        # Asked for no encoding, stats_over_http (9.2) has answered with a compressed body (seen
        # twice in a day of runs): name the encodings this reads, decode by Content-Encoding.
        request = urllib.request.Request(  # noqa: S310 (loopback)
            url, headers={"Accept-Encoding": "gzip, deflate"}
        )
        with opener.open(request, timeout=30) as response:
            body = response.read()
            encoding = (response.headers.get("Content-Encoding") or "").lower()
        if encoding in ("gzip", "deflate"):
            try:
                body = zlib.decompress(body, 47)  # a gzip or zlib header
            except zlib.error:
                body = zlib.decompress(body, -15)  # raw deflate
        # A byte that is not UTF-8 inside one of ATS's string counters (not ours) was seen once:
        # the numeric ones are what the tests read.
        data = json.loads(body.decode("utf-8", errors="replace"))
        return {
            name: int(value)
            for name, value in data["global"].items()
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit())
        }

    def stat(self, name: str) -> int:
        return self.stats().get(name, 0)

    def stop(self) -> None:
        terminate(self.process, grace=10)


def _wait_listening(port: int, host: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FrontStartError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise FrontStartError(f"{host}:{port} not listening after 60 s:\n{log.read_text()[-3000:]}")


def loopback_front(front: Front, workdir: Path, listen: str = LOOPBACK) -> Front:
    """``front`` bound to loopback (or ``listen``: a test node's side of its veth), with its
    config directory and disk store in ``workdir``; its registries on loopback."""
    return dataclasses.replace(
        front,
        listen_host=listen,
        backend_host=LOOPBACK,
        storage_path=str(workdir / "cache" / "cache.db"),
        config_dir=str(workdir / "etc"),
        user=None,
        threads=2,
        extra_records={
            "proxy.config.raw_stat_sync_interval_ms": ("INT", 100),
            "proxy.config.log.logfile_dir": ("STRING", str(workdir / "log")),
            "proxy.config.log.max_space_mb_headroom": ("INT", 10),
            # Nothing to resolve: every backend is an address.
            "proxy.config.dns.resolv_conf": ("STRING", "NULL"),
            "proxy.config.dns.nameservers": ("STRING", LOOPBACK),
            **front.extra_records,
        },
    )


def package_runroot(workdir: Path) -> Path:
    """``workdir/etc`` with the package's config files as installed, its log/run/cache dirs,
    and the runroot file that points the ATS tools at them (``--run-root`` or ``TS_RUNROOT``)."""
    etc = workdir / "etc"
    if etc.exists():
        shutil.rmtree(etc)
    shutil.copytree(PACKAGE_CONFIG, etc)
    for name in ("log", "run", "cache"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    runroot = workdir / "runroot.yaml"
    runroot.write_text(
        "prefix: /usr\nexec_prefix: /usr\nbindir: /usr/bin\nsbindir: /usr/sbin\n"
        f"sysconfdir: {etc}\ndatadir: /usr/share/trafficserver\nincludedir: /usr/include\n"
        "libdir: /usr/lib/trafficserver\nlibexecdir: /usr/lib/trafficserver/modules\n"
        f"localstatedir: {workdir}/run\nruntimedir: {workdir}/run\nlogdir: {workdir}/log\n"
        f"cachedir: {workdir}/cache\n"
    )
    return runroot


def write_config(front: Front, workdir: Path, listen: str = LOOPBACK) -> tuple[Front, Path]:
    """The rendered files for ``front`` (bound to loopback) under ``workdir``; returns the
    loopback front and the runroot file that points traffic_server at them."""
    front = loopback_front(front, workdir, listen)
    problems = check_front(front)
    if problems:
        raise FrontStartError("\n".join(problems))
    runroot = package_runroot(workdir)
    for path, text in front_files(front).items():
        Path(path).write_text(text)
    # ATS wants the store file to exist; sparse, as the production file is before it fills.
    with Path(front.storage_path).open("wb") as store:
        store.truncate(front.storage_mb * 1024 * 1024)
    return front, runroot


def start_front(front: Front, workdir: Path, listen: str = LOOPBACK) -> FrontProcess:
    """Serve ``front`` (rendered, bound to loopback by ``loopback_front``) until stopped.
    Returns once every public port accepts connections."""
    binary = require_binary("traffic_server")
    workdir.mkdir(parents=True, exist_ok=True)
    front, runroot = write_config(front, workdir, listen)
    log_path = workdir / "traffic_server.out"
    for attempt in (1, 2):
        started = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [binary, f"--run-root={runroot}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = FrontProcess(front, workdir, process, listen)
        try:
            for cache in front.caches:
                _wait_listening(cache.port, listen, process, log_path)
                if front.tls and cache.tls_port is not None:
                    _wait_listening(cache.tls_port, listen, process, log_path)
        except FrontStartError:
            proc.stop()
            # ATS 9.2 can segfault while it starts, in its first counter sync
            # (EThread::summarize_stats from RecExecRawStatSyncCbs, a thread not yet set up;
            # seen twice in a day of runs here, on a loaded machine, with this harness's 100 ms
            # sync interval). On the VM traffic_manager starts traffic_server again at once;
            # without it the harness does the same, once, for that crash only.
            output = log_path.read_bytes()[started:].decode(errors="replace")
            crashed_in_sync = process.returncode == -signal.SIGSEGV and "summarize_stats" in output
            if attempt == 1 and crashed_in_sync:
                continue
            raise
        except BaseException:
            proc.stop()
            raise
        return proc
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_front(front: Front, workdir: Path, listen: str = LOOPBACK) -> Iterator[FrontProcess]:
    proc = start_front(front, workdir, listen)
    try:
        yield proc
    finally:
        proc.stop()


def verify_config(front: Front, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``traffic_server -C verify_config``: the rendered files through ATS's own loader."""
    binary = require_binary("traffic_server")
    workdir.mkdir(parents=True, exist_ok=True)
    _front, runroot = write_config(front, workdir)
    return subprocess.run(
        [binary, f"--run-root={runroot}", "-C", "verify_config"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@dataclass(frozen=True)
class TestCa:
    __test__ = False  # a fixture's value, not a test class
    ca_cert: Path  # what nodes trust (hosts.toml `ca = [...]`)
    pem: Path  # the front's PEM: server certificate, then its key
    server_cert: Path


def make_test_ca(
    workdir: Path,
    ip: str = LOOPBACK,
    name: str = "test",
    *,
    days: int = 1,
    window: tuple[str, str] | None = None,
) -> TestCa:
    """A throwaway CA (openssl) and a server certificate with ``ip`` as its IP SAN, as the
    registry VM's would be: nodes name the VM by IP. The server certificate is valid ``days``
    from now, or over ``window`` (notBefore, notAfter as ``YYYYMMDDHHMMSSZ``: an expired one)."""
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
        "-keyout", str(ca_key), "-out", str(ca_cert), "-days", str(days + 1), "-subj",
        f"/CN=registry-mirrors {name} CA")  # fmt: skip
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}")  # fmt: skip
    if window is None:
        run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", str(days),
            "-extfile", str(ext))  # fmt: skip
    else:
        # `openssl ca` sets both dates (3.0's x509 -req has no notBefore).
        (workdir / "index.txt").write_text("")
        (workdir / "serial").write_text("01\n")
        (workdir / "issued").mkdir(exist_ok=True)
        (workdir / "ca.cnf").write_text(
            "[ca]\ndefault_ca = test\n[test]\n"
            f"database = {workdir}/index.txt\nnew_certs_dir = {workdir}/issued\n"
            f"serial = {workdir}/serial\ndefault_md = sha256\npolicy = any\n"
            "[any]\ncommonName = supplied\n"
        )
        run("ca", "-batch", "-notext", "-config", str(workdir / "ca.cnf"), "-keyfile",
            str(ca_key), "-cert", str(ca_cert), "-in", str(csr), "-out", str(cert),
            "-startdate", window[0], "-enddate", window[1], "-extfile", str(ext))  # fmt: skip
    pem = workdir / "front.pem"
    pem.write_text(cert.read_text() + key.read_text())
    pem.chmod(0o600)
    return TestCa(ca_cert, pem, cert)


# --- the front as the VM runs it: scripts/vm/front.sh under a service manager ------------------
_SYSTEMCTL_STANDIN = """#!/usr/bin/env bash
# TEST STAND-IN for `systemctl <verb> trafficserver` (no systemd here): the unit is Debian's
# ExecStart, traffic_manager, with TS_RUNROOT pointing it at the test's files.
set -euo pipefail
pidfile={pidfile}
running() {{ [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }}
stop() {{
  if running; then
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
  rm -f "$pidfile"
}}
start() {{ setsid traffic_manager >>{log} 2>&1 </dev/null & echo $! >"$pidfile"; }}
verb=$1
case $verb in
is-active) running ;;
enable) ;;
restart) stop; start ;;
stop) stop ;;
disable) [[ ${{2:-}} != --now ]] || stop ;;
*) echo "systemctl stand-in: unsupported: $*" >&2; exit 1 ;;
esac
"""


@dataclass
class ManagedFront:
    """``scripts/vm/front.sh`` run for real as root, as the front step runs it on the VM, with a
    ``systemctl`` stand-in that runs Debian's ExecStart (traffic_manager); ``traffic_ctl`` and
    ``traffic_server`` are the real ones (``TS_RUNROOT`` points them at ``workdir``)."""

    workdir: Path
    runroot: Path
    bin_dir: Path
    front: Front | None = None
    listen: str = LOOPBACK  # where the public ports listen (a test node's side of its veth)

    @property
    def pidfile(self) -> Path:
        return self.workdir / "manager.pid"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
                "TS_RUNROOT": str(self.runroot)}  # fmt: skip

    def apply(
        self, front: Front, *, restart: bool = True, edit: Callable[[str], str] = str
    ) -> subprocess.CompletedProcess[str]:
        """front.sh with ``front``'s files (bound to loopback) on stdin (``edit``: changed on
        the way, to send what the renderer never would)."""
        front = loopback_front(front, self.workdir, self.listen)
        params = {**front_params(front, restart=restart), "LOCAL_ADDRESS": self.listen}
        command = remote_command(FRONT_SCRIPT, params)
        bundle = front_bundle(front)
        if self.listen != LOOPBACK:
            # The script reads the counters from where the front listens here (the VM: loopback).
            bundle = bundle.replace(
                "allow_ip=127.0.0.1\n", f"allow_ip=127.0.0.1\nallow_ip={self.listen}\n"
            )
        result = subprocess.run(["bash", "-c", command], input=edit(bundle),
                                text=True, capture_output=True, env=self.env(),
                                timeout=300)  # fmt: skip
        if result.returncode == 0:
            self.front = front
        return result

    def tls(self, params: Mapping[str, str | int | bool]) -> subprocess.CompletedProcess[str]:
        """scripts/vm/registry-tls.sh as the steps run it (parameters only), its TLS_DIR in
        ``workdir/tls`` and ATS's config directory the managed one."""
        command = remote_command(TLS_SCRIPT, {**params, "TLS_DIR": str(self.tls_dir),
                                              "CONFIG_DIR": str(self.workdir / "etc"),
                                              "TLS_HOST": self.listen})  # fmt: skip
        return subprocess.run(["bash", "-c", command], text=True, capture_output=True,
                              env=self.env(), timeout=120)  # fmt: skip

    def renew_now(self) -> subprocess.CompletedProcess[str]:
        """What the VM's cron runs (``registry-tls renew``), with the state's renewal threshold
        moved past the certificate's lifetime: the renewal a certificate gets near its end."""
        state = self.tls_dir / "state.env"
        text = re.sub(r"(?m)^RENEW_BEFORE_DAYS=.*$", "RENEW_BEFORE_DAYS=100000", state.read_text())
        state.write_text(text)
        return subprocess.run(["bash", str(SCRIPTS_DIR / TLS_SCRIPT), "renew"], text=True,
                              capture_output=True, env={**self.env(), "TLS_DIR": str(self.tls_dir)},
                              timeout=120)  # fmt: skip

    @property
    def tls_dir(self) -> Path:
        return self.workdir / "tls"

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["traffic_ctl", *args], capture_output=True, text=True,
                              env=self.env(), timeout=60)  # fmt: skip

    def process(self) -> FrontProcess:
        """The running front, for its URLs and counters."""
        assert self.front is not None
        return FrontProcess(self.front, self.workdir, None)  # type: ignore[arg-type]

    def log(self) -> str:
        return "".join(
            path.read_text(errors="replace")
            for path in (self.workdir / "manager.out", self.workdir / "log" / "diags.log")
            if path.exists()
        )

    def stop(self) -> None:
        subprocess.run([str(self.bin_dir / "systemctl"), "stop", "trafficserver"],
                       env=self.env(), timeout=60, check=False)  # fmt: skip


@contextlib.contextmanager
def managed_front(workdir: Path, listen: str = LOOPBACK) -> Iterator[ManagedFront]:
    require_binary("traffic_manager")
    workdir.mkdir(parents=True, exist_ok=True)
    runroot = package_runroot(workdir)
    bin_dir = workdir / "bin"
    bin_dir.mkdir(exist_ok=True)
    systemctl = bin_dir / "systemctl"
    pidfile, log = (shlex.quote(str(workdir / name)) for name in ("manager.pid", "manager.out"))
    systemctl.write_text(_SYSTEMCTL_STANDIN.format(pidfile=pidfile, log=log))
    systemctl.chmod(0o755)
    managed = ManagedFront(workdir, runroot, bin_dir, listen=listen)
    try:
        yield managed
    finally:
        managed.stop()
