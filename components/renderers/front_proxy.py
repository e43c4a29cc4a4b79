"""The front of the caches: Varnish (coalesces concurrent cold blob fetches and streams them to
every waiting client) and, with TLS on, hitch (terminates TLS, hands the plain connection to
Varnish with the PROXY protocol). Both from Debian; one varnishd and one hitch serve every cache.

Pure: plain values in, text and argv out, no ``import pulumi``. The design and the measurements
behind every value here are in docs/design/front-proxy.md. In short:

- Only ``GET /v2/<name>/blobs/sha256:<hex>`` (no ``Authorization``) is looked up. Blobs are
  content-addressed: every other request (manifests by tag or digest, HEAD, ``/v2/``, pushes,
  anything with credentials) is passed to the registry untouched, query string included, and its
  answer (``WWW-Authenticate``, redirects, errors) goes back as the registry gave it.
- A blob the registry answers 200 for becomes a Varnish object for ``COALESCE_TTL`` seconds and
  is streamed (``do_stream``): the first request fetches it once; the others wait on it and get
  the bytes as they arrive (Distribution 2.8 and 3.1.1 ignore ``Range`` on a miss, so nginx's
  ``slice`` cannot do this and ``proxy_cache_lock`` alone makes them wait for the whole blob).
  Then it expires: the front never keeps a blob longer than the fetch plus a second, so it does
  not store the cache twice and never outlives a registry GC by more than that.
- Any other status is never cached (a hit-for-miss of one second: queued requests go to the
  registry on their own instead of one by one). A registry that is down gives 503 at once
  (connect refused on loopback), which containerd treats as "next host".
- Objects live in one bounded storage (``-s blobs=...``); a blob larger than ``max_object_mb``
  is passed uncoalesced rather than failing a fetch that cannot be stored.
- The key is the cache and the path, never the query string (``?ns=`` differs by client setup,
  not by content) nor the ``Host`` header (nodes name the VM by IP, a DNS name or anything).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Seconds a fetched blob stays in the front after its fetch ended: long enough for a request that
# arrives right at the end of the fetch to join it, short enough that the front never serves what
# the registry no longer has (GC, expiry) for longer than this.
COALESCE_TTL_S = 1
# Seconds a non-200 answer for a blob is remembered as "not coalescable" (hit-for-miss): the
# requests queued behind it go to the registry at once, not one after the other.
HIT_FOR_MISS_S = 1
BLOB_PATH_RE = r"^/v2/.+/blobs/sha256:[0-9a-f]{64}(\?.*)?$"

VCL_PATH = "/etc/varnish/registry-mirrors.vcl"
VARNISH_DROPIN_PATH = "/etc/systemd/system/varnish.service.d/registry-mirrors.conf"
HITCH_CONF_PATH = "/etc/hitch/hitch.conf"
PEM_PATH = "/etc/registry-mirrors/tls/front.pem"
STORAGE_PATH = "/var/lib/registry-front/blobs.bin"
# Debian's varnish.service values (admin socket and its secret stay where the package puts them:
# varnishreload and varnishadm find them there).
ADMIN_LISTEN = "localhost:6082"
SECRET_PATH = "/etc/varnish/secret"  # noqa: S105 (a path, not a secret)
# Loopback listener of varnishd that only hitch talks to (PROXY protocol v2).
PROXY_PORT = 6086

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class FrontCache:
    """One cache behind the front."""

    name: str  # the cache's container name (registry, registry-ghcr, ...)
    port: int  # public plain-HTTP port (the cache's port today)
    backend_port: int  # where the registry container is published, on backend_host only
    tls_port: int | None = None  # public HTTPS port (hitch), when TLS is on

    @property
    def backend(self) -> str:
        """The VCL backend name (VCL names take no '-')."""
        return "cache_" + self.name.replace("-", "_")


@dataclass(frozen=True)
class Front:
    caches: tuple[FrontCache, ...]
    # Where the public listeners bind ("" = every address, IPv4 and IPv6).
    listen_host: str = ""
    backend_host: str = "127.0.0.1"
    # Serve plain HTTP on each cache's ``port``. Off once every node speaks HTTPS (see the HTTP ->
    # HTTPS switch in the design): then only the TLS ports are public.
    plain_http: bool = True
    # hitch's PEM: server certificate, its chain and its key, in one file. None: no TLS.
    pem_file: str | None = None
    # Bounded storage for in-flight blobs: a file (``storage_path``) or memory (None).
    storage_path: str | None = STORAGE_PATH
    storage_mb: int = 8192
    # Varnish's Transient storage (pass-through bodies, hit-for-miss): bounded too.
    transient_mb: int = 512
    # A blob larger than this is passed, not coalesced (default: half the storage).
    max_object_mb: int | None = None
    proxy_port: int = PROXY_PORT
    admin_listen: str = ADMIN_LISTEN
    secret_path: str = SECRET_PATH
    vcl_path: str = VCL_PATH
    connect_timeout_s: float = 1.0
    # Upstream time to first byte on a miss is the registry's (it fetches from its upstream).
    first_byte_timeout_s: int = 60
    between_bytes_timeout_s: int = 60
    extra_params: Mapping[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.pem_file is not None

    @property
    def resolved_max_object_mb(self) -> int:
        return self.max_object_mb if self.max_object_mb is not None else self.storage_mb // 2


class FrontConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def check_front(front: Front) -> list[str]:
    """Problems with ``front``, one line each (empty: fine)."""
    problems: list[str] = []
    if not front.caches:
        problems.append("front: no cache to serve")
    if not front.plain_http and not front.tls:
        problems.append("front: neither plain HTTP nor TLS: nothing would listen")
    public: dict[int, str] = {}
    loopback: dict[int, str] = {}
    names: set[str] = set()

    def claim(ports: dict[int, str], port: int | None, what: str) -> None:
        if port is None:
            return
        if not 1 <= port <= 65535:
            problems.append(f"{what}: port {port} is not 1-65535")
        elif port in ports:
            problems.append(f"{what}: port {port} is already {ports[port]}")
        else:
            ports[port] = what

    for cache in front.caches:
        if not _NAME.match(cache.name):
            problems.append(f"cache {cache.name!r}: not a name (letters, digits, - and _)")
        if cache.backend in names:
            problems.append(f"cache {cache.name!r}: listed twice")
        names.add(cache.backend)
        claim(public, cache.port, f"{cache.name} HTTP")
        if front.tls:
            if cache.tls_port is None:
                problems.append(f"cache {cache.name!r}: TLS is on but it has no tls_port")
            claim(public, cache.tls_port, f"{cache.name} HTTPS")
    for cache in front.caches:
        # The registry's published port and the front's public ones share the machine: a
        # backend on a public port number would collide with the front's wildcard listener.
        if cache.backend_port in public:
            problems.append(
                f"{cache.name} backend: port {cache.backend_port} is already "
                f"{public[cache.backend_port]}"
            )
        claim(loopback, cache.backend_port, f"{cache.name} backend")
    if front.tls:
        for port in (front.proxy_port,):
            if port in public or port in loopback:
                problems.append(f"front PROXY listener: port {port} is already in use")
    if front.storage_mb < 64:
        problems.append("front: storage_mb below 64 cannot hold a useful blob")
    if front.resolved_max_object_mb > front.storage_mb:
        problems.append("front: max_object_mb is larger than the storage")
    return problems


def _checked(front: Front) -> Front:
    problems = check_front(front)
    if problems:
        raise FrontConfigError(problems)
    return front


def _seconds(value: float) -> str:
    return f"{value:g}s"


def render_vcl(front: Front) -> str:
    """The VCL: one backend per cache, chosen by the port the client connected to."""
    _checked(front)
    lines = [
        "vcl 4.1;",
        "# Rendered by registry-mirrors (components/renderers/front_proxy.py); changes are",
        "# overwritten. Why each rule is here: docs/design/front-proxy.md.",
        "",
        "import std;",
        "",
    ]
    for cache in front.caches:
        lines += [
            f"backend {cache.backend} {{",
            f'    .host = "{front.backend_host}";',
            f'    .port = "{cache.backend_port}";',
            f"    .connect_timeout = {_seconds(front.connect_timeout_s)};",
            f"    .first_byte_timeout = {_seconds(front.first_byte_timeout_s)};",
            f"    .between_bytes_timeout = {_seconds(front.between_bytes_timeout_s)};",
            "}",
            "",
        ]
    max_bytes = front.resolved_max_object_mb * 1024 * 1024
    lines += [
        "sub vcl_recv {",
        "    # server.ip is the address the client connected to (behind hitch: from the PROXY",
        "    # header), so one port of each cache, plain or TLS, picks its registry.",
    ]
    keyword = "if"
    for cache in front.caches:
        ports = [cache.port] if front.plain_http else []
        if front.tls and cache.tls_port is not None:
            ports.append(cache.tls_port)
        test = " || ".join(f"std.port(server.ip) == {port}" for port in ports)
        lines += [
            f"    {keyword} ({test}) {{",
            f"        set req.backend_hint = {cache.backend};",
        ]
        keyword = "} elsif"
    lines += [
        "    } else {",
        '        return (synth(404, "No cache on this port"));',
        "    }",
        "    # Only blobs, which are content-addressed, and only without credentials.",
        f'    if (req.method == "GET" && req.url ~ "{BLOB_PATH_RE}"',
        "        && !req.http.Authorization) {",
        "        return (hash);",
        "    }",
        "    return (pass);",
        "}",
        "",
        "sub vcl_hash {",
        "    # The cache and the path; never the query string (?ns=) nor the Host header.",
        "    hash_data(req.backend_hint);",
        '    hash_data(regsub(req.url, "\\?.*$", ""));',
        "    return (lookup);",
        "}",
        "",
        "sub vcl_backend_response {",
        "    if (bereq.uncacheable) {",
        "        return (deliver);",
        "    }",
        "    if (beresp.status == 200",
        f"        && std.integer(beresp.http.Content-Length, {max_bytes + 1}) <= {max_bytes}) {{",
        "        # Streamed to every client waiting on it while it arrives; gone a moment after.",
        "        set beresp.storage = storage.blobs;",
        f"        set beresp.ttl = {COALESCE_TTL_S}s;",
        "        set beresp.grace = 0s;",
        "        set beresp.keep = 0s;",
        "        set beresp.do_stream = true;",
        "        return (deliver);",
        "    }",
        "    # Errors, redirects, 404 and blobs too large for the storage: never cached; the",
        "    # requests waiting on this one go to the registry on their own.",
        "    set beresp.uncacheable = true;",
        f"    set beresp.ttl = {HIT_FOR_MISS_S}s;",
        "    set beresp.grace = 0s;",
        "    set beresp.do_stream = true;",
        "    return (deliver);",
        "}",
        "",
        "sub vcl_deliver {",
        "    unset resp.http.Via;",
        "}",
        "",
    ]
    return "\n".join(lines)


def _listen(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def varnishd_argv(
    front: Front,
    *,
    binary: str = "/usr/sbin/varnishd",
    jail: str = "unix,user=vcache",
    workdir: str | None = None,
) -> list[str]:
    """varnishd's command line (foreground, as systemd runs it)."""
    _checked(front)
    argv = [binary, "-j", jail, "-F"]
    if workdir is not None:
        argv += ["-n", workdir]
    if front.plain_http:
        for cache in front.caches:
            argv += ["-a", f"{cache.backend}={_listen(front.listen_host, cache.port)},HTTP"]
    if front.tls:
        argv += ["-a", f"hitch={_listen('127.0.0.1', front.proxy_port)},PROXY"]
    argv += ["-T", front.admin_listen, "-S", front.secret_path, "-f", front.vcl_path]
    if front.storage_path is not None:
        argv += ["-s", f"blobs=file,{front.storage_path},{front.storage_mb}M"]
    else:
        argv += ["-s", f"blobs=malloc,{front.storage_mb}M"]
    argv += ["-s", f"Transient=malloc,{front.transient_mb}M"]
    # Varnish puts every object whose ttl + grace + keep is below `shortlived` (10 s) into
    # Transient, whatever the VCL says: the coalesced blobs (1 s) must go to the bounded storage.
    params = {"shortlived": "0", **front.extra_params}
    for key, value in sorted(params.items()):
        argv += ["-p", f"{key}={value}"]
    return argv


def _systemd_quote(arg: str) -> str:
    if re.match(r"^[A-Za-z0-9_./:=,+@-]+$", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_varnish_dropin(front: Front) -> str:
    """A drop-in for Debian's varnish.service: our listeners, VCL and storage."""
    argv = varnishd_argv(front)
    # One option and its value per line.
    lines = [_systemd_quote(argv[0])]
    for arg in argv[1:]:
        if arg.startswith("-"):
            lines.append(_systemd_quote(arg))
        else:
            lines[-1] += " " + _systemd_quote(arg)
    exec_start = " \\\n    ".join(lines)
    return (
        "# Rendered by registry-mirrors (components/renderers/front_proxy.py).\n"
        "[Service]\n"
        "ExecStart=\n"
        f"ExecStart={exec_start}\n"
        # Never leave the caches without their front for long (containerd then goes upstream).
        "Restart=always\n"
        "RestartSec=1\n"
    )


def render_hitch_conf(front: Front, *, user: str | None = "_hitch") -> str:
    """hitch.conf: one frontend per cache's TLS port, all handed to varnishd's PROXY listener."""
    _checked(front)
    if front.pem_file is None:
        raise FrontConfigError(["front: hitch needs TLS (pem_file)"])
    host = front.listen_host or "*"
    lines = ["# Rendered by registry-mirrors (components/renderers/front_proxy.py)."]
    for cache in front.caches:
        lines += ["frontend = {", f'    host = "{host}"', f'    port = "{cache.tls_port}"', "}"]
    lines += [
        f'backend = "[127.0.0.1]:{front.proxy_port}"',
        f'pem-file = "{front.pem_file}"',
        "write-proxy-v2 = on",
        "tls-protos = TLSv1.2 TLSv1.3",
        'alpn-protos = "http/1.1"',
        "workers = 2",
        "backlog = 1024",
        # Nodes keep connections open between pulls: keep them (seconds).
        "keepalive = 3600",
        "daemon = off",
    ]
    if user is not None:
        lines += [f'user = "{user}"', f'group = "{user}"']
    return "\n".join(lines) + "\n"


def front_files(front: Front) -> dict[str, str]:
    """What the front needs on the VM: absolute path -> text."""
    files = {front.vcl_path: render_vcl(front), VARNISH_DROPIN_PATH: render_varnish_dropin(front)}
    if front.tls:
        files[HITCH_CONF_PATH] = render_hitch_conf(front)
    return files


def default_backend_port(port: int) -> int:
    """Where a cache's registry is published (loopback only) once the front owns its port."""
    return port + 10000


def default_tls_port(port: int) -> int:
    """A cache's HTTPS port: its own, next to the metrics port (port + 1)."""
    return port + 2


def front_for(
    caches: Iterable[tuple[str, int]],
    *,
    tls: bool = False,
    plain_http: bool = True,
    **options: object,
) -> Front:
    """The default front for caches given as (name, public port)."""
    built = tuple(
        FrontCache(
            name,
            port,
            default_backend_port(port),
            default_tls_port(port) if tls else None,
        )
        for name, port in caches
    )
    return Front(
        built,
        plain_http=plain_http,
        pem_file=PEM_PATH if tls else None,
        **options,  # type: ignore[arg-type]
    )


def public_ports(front: Front) -> Sequence[int]:
    """Every port the front listens on for nodes (the firewall opens these)."""
    ports: list[int] = []
    for cache in front.caches:
        if front.plain_http:
            ports.append(cache.port)
        if front.tls and cache.tls_port is not None:
            ports.append(cache.tls_port)
    return ports
