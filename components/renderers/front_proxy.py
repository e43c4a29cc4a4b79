"""The front of the caches: Apache Traffic Server (Debian's ``trafficserver``), ONE process that
coalesces concurrent cold blob fetches, streams the one fetch to every waiting client
(read-while-writer) and terminates TLS. One traffic_server serves every cache.

Pure: plain values in, config text out, no ``import pulumi``. The design and the measurements
behind every value here are in docs/design/front-proxy.md (Varnish + hitch, Squid and nginx were
measured against the same tests). In short:

- Only ``GET /v2/<name>/blobs/sha256:<hex>`` without ``Authorization`` goes through the cache
  (a header_rewrite rule turns the cache off for everything else: manifests by tag or digest,
  HEAD, ``/v2/``, pushes, anything with credentials). Those are proxied untouched, query string
  included, and the registry's answer (``WWW-Authenticate``, redirects, errors) comes back as is.
- The first request for a blob opens the cache write and fetches it once; a request that finds
  the write taken retries the cache read (``open_write_fail_action`` 5, READ_RETRY) and, once the
  response headers are in, reads the object while it is written (``enable_read_while_writer``):
  waiting clients get the bytes as they arrive. Distribution 2.8 and 3.1.1 ignore ``Range`` on a
  miss, so nothing range-based could do this.
- A blob is fresh for ``COALESCE_TTL_S`` (the heuristic lifetime: the registry sends no expiry):
  a request after that asks the registry again, so the registry's hit counters count it and a
  blob GC'd there is never answered by the front past that second. The bytes stay in the
  front's bounded disk store until its cyclic writes reuse the space.
- Non-200 answers are never cached (negative caching off). A registry that is down answers at
  once (connect refused on loopback, no retry), as 503: containerd takes its next host.
- The key is the cache (its backend) and the path, never the query string (``?ns=`` differs by
  client setup, not by content) nor the name the node used for the VM.
- Every cache's plain port is always a listener; with ``plain_http`` off it refuses every
  request at once (403, the registry never asked). The end of the HTTP -> HTTPS switch is then a
  ``traffic_ctl config reload`` of remap.config, which keeps every connection, never a restart
  (ATS reads its listening ports only at start).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from components.settings import Settings

# Seconds a fetched blob stays fresh in the front after its fetch: long enough for a request
# that arrives right at the end of the fetch to join it, short enough that the front never
# answers for what the registry no longer has (GC, expiry) for longer than this.
COALESCE_TTL_S = 1
BLOB_PATH_RE = r"^/v2/.+/blobs/sha256:[0-9a-f]{64}(\?.*)?$"
# The same, as header_rewrite sees the path (no leading slash, no query string).
_HRW_BLOB_PATH = r"/^v2\/.+\/blobs\/sha256:[0-9a-f]{64}$/"

CONFIG_DIR = "/etc/trafficserver"
BLOB_RULES_NAME = "registry-mirrors-blobs.config"
PLAIN_OFF_RULES_NAME = "registry-mirrors-plain-off.config"
STATS_CONFIG_NAME = "registry-mirrors-stats.config"
STATS_PATH = "_front_stats"
# The certificate (scripts/vm/registry-tls.sh): ssl_multicert.config names the current PEM,
# a new file per issue (ATS caches a certificate by its path: a reload with the same path kept
# serving the old one, measured).
TLS_DIR = "/etc/registry-mirrors/tls"
STORAGE_PATH = "/var/lib/registry-front/cache.db"
# What Debian's trafficserver package creates and runs as.
ATS_USER = "trafficserver"

# A cache is named after its container: what the settings accept as one (settings/checks.py) must
# render (a stricter rule here refused a valid stack with an exception).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class FrontCache:
    """One cache behind the front."""

    name: str  # the cache's container name (registry, registry-ghcr, ...)
    port: int  # public plain-HTTP port (the cache's port today)
    backend_port: int  # where the registry container is published, on backend_host only
    tls_port: int | None = None  # public HTTPS port, when TLS is on


@dataclass(frozen=True)
class Front:
    caches: tuple[FrontCache, ...]
    # Where the public listeners bind ("" = every address, IPv4 and IPv6).
    listen_host: str = ""
    backend_host: str = "127.0.0.1"
    # Serve plain HTTP on each cache's ``port``. Off once every node speaks HTTPS (see the HTTP ->
    # HTTPS switch in the design): the port then refuses every request (403).
    plain_http: bool = True
    # The PEM: server certificate, its chain and its key, in one file; ssl_multicert.config names
    # it. None: no TLS, unless ``managed_certificate``.
    pem_file: str | None = None
    # TLS with ssl_multicert.config written by the certificate script on the VM (which names a
    # new PEM at every issue): not one of ``front_files``.
    managed_certificate: bool = False
    # The bounded disk store the blobs in flight are written to (a file; ATS reuses it
    # cyclically). It must hold every blob in flight at one moment.
    storage_path: str = STORAGE_PATH
    storage_mb: int = 8192
    # RAM cache in front of the disk store (small objects: config blobs).
    ram_cache_mb: int = 64
    config_dir: str = CONFIG_DIR
    user: str | None = ATS_USER  # None: stay the user that starts it (tests)
    # Worker threads: None = ATS's own choice from the cores.
    threads: int | None = None
    connect_timeout_s: int = 1
    # Upstream time to first byte on a miss is the registry's (it fetches from its upstream):
    # a request waiting on a fetch in flight waits this long for its response headers.
    first_byte_timeout_s: int = 60
    between_bytes_timeout_s: int = 60
    # Extra records.config entries: name -> (type, value).
    extra_records: Mapping[str, tuple[str, str | int | float]] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.pem_file is not None or self.managed_certificate


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
        problems.append("front: neither plain HTTP nor TLS: nothing would be served")
    if front.pem_file is not None and front.managed_certificate:
        problems.append("front: a pem_file and a managed certificate: one names the PEM")
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
            problems.append(f"cache {cache.name!r}: not a name (letters, digits, _, . and -)")
        if cache.name in names:
            problems.append(f"cache {cache.name!r}: listed twice")
        names.add(cache.name)
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
    if front.storage_mb < 64:
        problems.append("front: storage_mb below 64 cannot hold a useful blob")
    if front.ram_cache_mb > front.storage_mb:
        problems.append("front: ram_cache_mb is larger than the storage")
    return problems


def _checked(front: Front) -> Front:
    problems = check_front(front)
    if problems:
        raise FrontConfigError(problems)
    return front


def _port_descriptors(front: Front, port: int, *, ssl: bool) -> list[str]:
    """records.config server_ports entries for one public port."""
    tail = ":ssl" if ssl else ""
    host = front.listen_host
    if not host:
        return [f"{port}{tail}", f"{port}{tail}:ipv6"]
    family = ":ipv6" if ":" in host else ""
    address = f"[{host}]" if ":" in host else host
    return [f"{port}{tail}{family}:ip-in={address}"]


def records(front: Front) -> dict[str, tuple[str, str | int | float]]:
    """records.config as name -> (type, value)."""
    _checked(front)
    ports: list[str] = []
    for cache in front.caches:
        # Always: with plain_http off the port refuses (a listener ATS only reads at start).
        ports += _port_descriptors(front, cache.port, ssl=False)
        if front.tls and cache.tls_port is not None:
            ports += _port_descriptors(front, cache.tls_port, ssl=True)
    result: dict[str, tuple[str, str | int | float]] = {
        "proxy.config.http.server_ports": ("STRING", " ".join(ports)),
        "proxy.config.admin.user_id": ("STRING", front.user or "#-1"),
        "proxy.config.proxy_name": ("STRING", "registry-front"),
        # Load remap plugins (header_rewrite) where they are installed. The default (1) copies
        # each into a directory under the runtime dir, /run/trafficserver, and dlopens the copy:
        # /run is mounted noexec on Debian, so "failed to map segment from shared object",
        # remap.config failed to load, and traffic_server exited at every start (the VM tier's
        # guest). A config reload still applies new remap rules; only a changed plugin binary
        # (a package upgrade) needs a restart.
        "proxy.config.plugin.dynamic_reload_mode": ("INT", 0),
        # A reverse proxy only: a request must match a remap rule (one per cache port).
        "proxy.config.reverse_proxy.enabled": ("INT", 1),
        "proxy.config.url_remap.remap_required": ("INT", 1),
        "proxy.config.url_remap.pristine_host_hdr": ("INT", 1),
        "proxy.config.http.insert_request_via_str": ("INT", 0),
        "proxy.config.http.insert_response_via_str": ("INT", 0),
        "proxy.config.http.response_server_enabled": ("INT", 0),
        # What is cached: blobs only (the header_rewrite rule turns it off for the rest); the
        # registry sends neither Expires nor Last-Modified, so the heuristic lifetime is the
        # object's life; ``?ns=`` is not "dynamic"; errors are never cached.
        "proxy.config.http.cache.http": ("INT", 1),
        "proxy.config.http.cache.required_headers": ("INT", 0),
        "proxy.config.http.cache.cache_urls_that_look_dynamic": ("INT", 1),
        "proxy.config.http.cache.heuristic_min_lifetime": ("INT", COALESCE_TTL_S),
        "proxy.config.http.cache.heuristic_max_lifetime": ("INT", COALESCE_TTL_S),
        "proxy.config.http.cache.guaranteed_max_lifetime": ("INT", COALESCE_TTL_S),
        "proxy.config.http.cache.max_stale_age": ("INT", 0),
        "proxy.config.http.cache.ignore_authentication": ("INT", 0),
        "proxy.config.http.negative_caching_enabled": ("INT", 0),
        "proxy.config.http.cache.range.lookup": ("INT", 0),
        # Read-while-writer: ATS's docs require all four. max_doc_size 0 is one of them:
        # measured, with a size limit the waiting clients got nothing until the fetch ended.
        "proxy.config.cache.enable_read_while_writer": ("INT", 1),
        "proxy.config.http.background_fill_active_timeout": ("INT", 0),
        "proxy.config.http.background_fill_completed_threshold": ("FLOAT", 0.0),
        "proxy.config.cache.max_doc_size": ("INT", 0),
        "proxy.config.cache.read_while_writer.max_retries": ("INT", 100),
        "proxy.config.cache.read_while_writer_retry.delay": ("INT", 50),
        # A request that finds the blob's write taken (a fetch in flight, headers not in yet)
        # retries the cache read instead of going to the registry itself (5 = READ_RETRY), for
        # up to the first-byte timeout.
        "proxy.config.http.cache.open_write_fail_action": ("INT", 5),
        "proxy.config.http.cache.max_open_write_retries": ("INT", 1),
        "proxy.config.http.cache.open_read_retry_time": ("INT", 100),
        "proxy.config.http.cache.max_open_read_retries": ("INT", front.first_byte_timeout_s * 10),
        # A registry that is down: refused at once on loopback, no retry, no "down" memory.
        "proxy.config.http.connect_attempts_max_retries": ("INT", 0),
        "proxy.config.http.connect_attempts_max_retries_dead_server": ("INT", 0),
        "proxy.config.http.connect_attempts_rr_retries": ("INT", 0),
        "proxy.config.http.connect_attempts_timeout": ("INT", front.connect_timeout_s),
        "proxy.config.http.down_server.cache_time": ("INT", 0),
        "proxy.config.http.transaction_no_activity_timeout_out": (
            "INT",
            max(front.first_byte_timeout_s, front.between_bytes_timeout_s),
        ),
        "proxy.config.http.transaction_active_timeout_out": ("INT", 0),
        # Nodes keep their connections between pulls (seconds).
        "proxy.config.http.keep_alive_no_activity_timeout_in": ("INT", 3600),
        "proxy.config.cache.ram_cache.size": ("INT", front.ram_cache_mb * 1024 * 1024),
        # Refuse to start without the disk store (nothing could be coalesced).
        "proxy.config.http.wait_for_cache": ("INT", 2),
        "proxy.config.ssl.server.multicert.exit_on_load_fail": ("INT", 1),
        "proxy.config.ssl.TLSv1": ("INT", 0),
        "proxy.config.ssl.TLSv1_1": ("INT", 0),
        "proxy.config.ssl.server.cert.path": ("STRING", front.config_dir),
        "proxy.config.ssl.server.private_key.path": ("STRING", front.config_dir),
    }
    if front.threads is not None:
        result["proxy.config.exec_thread.autoconfig"] = ("INT", 0)
        result["proxy.config.exec_thread.limit"] = ("INT", front.threads)
    result.update(front.extra_records)
    return result


def render_records(front: Front) -> str:
    lines = [
        "# Rendered by registry-mirrors (components/renderers/front_proxy.py); changes are",
        "# overwritten. Why each record is here: docs/design/front-proxy.md.",
    ]
    for name, (kind, value) in records(front).items():
        if isinstance(value, float):
            value = f"{value:f}"
        lines.append(f"CONFIG {name} {kind} {value}")
    return "\n".join(lines) + "\n"


def render_blob_rules() -> str:
    """header_rewrite rules for every cache's remap rule."""
    return "\n".join(
        [
            "# Rendered by registry-mirrors (components/renderers/front_proxy.py).",
            "# Only blob GETs without credentials go through the cache (content-addressed);",
            "# everything else is proxied as it came, never looked up, never stored.",
            "cond %{METHOD} =GET [NOT,OR]",
            "cond %{CLIENT-HEADER:Authorization} /./ [OR]",
            f"cond %{{CLIENT-URL:PATH}} {_HRW_BLOB_PATH} [NOT]",
            "    set-config proxy.config.http.cache.http 0",
            "# The registry unreachable (ATS says 502): 503, as Distribution and Varnish say it;",
            "# containerd takes its next host on either.",
            "cond %{SEND_RESPONSE_HDR_HOOK} [AND]",
            "cond %{STATUS} =502",
            "    set-status 503",
            "",
        ]
    )


def render_plain_off_rules() -> str:
    """header_rewrite rules of a plain port once plain HTTP is off: 403 at the remap, the
    registry is never asked. containerd takes its next host on it, as on a refused port."""
    return (
        "# Rendered by registry-mirrors (components/renderers/front_proxy.py).\n"
        "# Plain HTTP is off: every request on this port is refused; use the HTTPS port.\n"
        "set-status 403\n"
    )


def render_remap(front: Front) -> str:
    """One rule per public port: any name the node uses for the VM, this port -> its registry.
    The cache key is the registry (the remapped URL) and the path, never the query string."""
    _checked(front)
    # Rule files by name: the plugins read a relative path from ATS's config directory, so the
    # same text checks a staged copy of the directory (scripts/vm/front.sh) and serves from it.
    plugins = (
        f"@plugin=header_rewrite.so @pparam={BLOB_RULES_NAME} "
        "@plugin=cachekey.so @pparam=--remove-all-params=true"
    )
    refuse = f"@plugin=header_rewrite.so @pparam={PLAIN_OFF_RULES_NAME}"
    lines = ["# Rendered by registry-mirrors (components/renderers/front_proxy.py)."]
    for cache in front.caches:
        target = f"http://{front.backend_host}:{cache.backend_port}"
        if front.plain_http:
            lines.append(f"regex_map http://^.*$:{cache.port} {target} {plugins}")
        else:
            lines.append(f"regex_map http://^.*$:{cache.port} {target} {refuse}")
        if front.tls and cache.tls_port is not None:
            lines.append(f"regex_map https://^.*$:{cache.tls_port} {target} {plugins}")
    return "\n".join(lines) + "\n"


def render_storage(front: Front) -> str:
    return f"{front.storage_path} {front.storage_mb}M\n"


def render_ssl_multicert(front: Front) -> str:
    if front.pem_file is None:
        return "# No TLS.\n"
    return ssl_multicert_line(front.pem_file)


def ssl_multicert_line(pem_file: str) -> str:
    """What scripts/vm/registry-tls.sh writes too, naming each new PEM."""
    return f"dest_ip=* ssl_cert_name={pem_file}\n"


def render_ip_allow() -> str:
    """Nodes may use any method (pushes pass through to the registry, which decides)."""
    return (
        "ip_allow:\n"
        "  - apply: in\n    ip_addrs: [0/0, ::/0]\n    action: allow\n    methods: ALL\n"
        "  - apply: out\n    ip_addrs: [0/0, ::/0]\n    action: allow\n    methods: ALL\n"
    )


def render_plugin_config(front: Front) -> str:
    # Counters (cache_miss_cold, cache_hit_rww, ...) as JSON for health checks and the exporter.
    # An absolute path: stats_over_http does not read a relative one from the config directory.
    return f"stats_over_http.so --integer-counters {front.config_dir}/{STATS_CONFIG_NAME}\n"


def render_stats_config() -> str:
    """stats_over_http answers ``/_front_stats`` on every port, to loopback clients only."""
    return f"path={STATS_PATH}\nallow_ip=127.0.0.1\nallow_ip6=::1\n"


def front_files(front: Front) -> dict[str, str]:
    """What the front needs on the VM: absolute path -> text (Debian's trafficserver package
    provides every other file of /etc/trafficserver)."""
    base = front.config_dir
    files = {
        f"{base}/records.config": render_records(front),
        f"{base}/remap.config": render_remap(front),
        f"{base}/{BLOB_RULES_NAME}": render_blob_rules(),
        f"{base}/{PLAIN_OFF_RULES_NAME}": render_plain_off_rules(),
        f"{base}/storage.config": render_storage(front),
        f"{base}/ip_allow.yaml": render_ip_allow(),
        f"{base}/plugin.config": render_plugin_config(front),
        f"{base}/{STATS_CONFIG_NAME}": render_stats_config(),
    }
    if not front.managed_certificate:
        files[f"{base}/ssl_multicert.config"] = render_ssl_multicert(front)
    return files


FRONT_HEADER = "# registry-mirrors-front: "
FRONT_SCRIPT = "vm/front.sh"


def front_bundle(front: Front) -> str:
    """scripts/vm/front.sh's stdin: every file of ``front_files`` after a header line naming it
    (all of them live in ``config_dir``). Plain text: a reviewer reads the change in the
    preview; nothing in it is secret."""
    parts = []
    for path, text in front_files(front).items():
        directory, _, name = path.rpartition("/")
        if directory != front.config_dir or not text.endswith("\n"):
            raise ValueError(f"{path} cannot travel in the front's bundle")
        if any(line.startswith(FRONT_HEADER) for line in text.splitlines()):
            raise ValueError(f"{path} holds a bundle header line")
        parts.append(f"{FRONT_HEADER}{name}\n{text}")
    return "".join(parts)


def front_params(front: Front, *, restart: bool = True) -> dict[str, str | int | bool]:
    """scripts/vm/front.sh's parameters for ``front``."""
    return {
        "PORTS": " ".join(str(port) for port in public_ports(front)),
        "STORE": front.storage_path,
        "STORE_MB": front.storage_mb,
        "CONFIG_DIR": front.config_dir,
        "STATS_PATH": STATS_PATH,
        "PLAIN_OFF_RULES": PLAIN_OFF_RULES_NAME,
        "RESTART": restart,
    }


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
        managed_certificate=tls,
        **options,  # type: ignore[arg-type]
    )


def public_ports(front: Front) -> Sequence[int]:
    """Every port the front listens on for nodes (the firewall opens these): each plain port
    (it serves, or refuses with plain HTTP off) and each HTTPS port."""
    ports: list[int] = []
    for cache in front.caches:
        ports.append(cache.port)
        if front.tls and cache.tls_port is not None:
            ports.append(cache.tls_port)
    return ports


def settings_front(settings: Settings, *, serve_plain: bool) -> Front:
    """The VM's front for ``settings``. ``serve_plain``: whether the plain ports serve (True
    while nodes may still be on ``http://``; after every node step, ``tls.plainHttp``); with TLS
    off they always do."""
    tls = settings.tls.enabled
    caches = tuple(
        FrontCache(
            upstream.container,
            upstream.port,
            upstream.resolved_backend_port,
            upstream.resolved_tls_port if tls else None,
        )
        for upstream in settings.upstreams
    )
    return _checked(
        Front(
            caches,
            plain_http=serve_plain or not tls,
            managed_certificate=tls,
            storage_mb=settings.front.storage_mb,
            ram_cache_mb=settings.front.ram_cache_mb,
        )
    )
