"""The k3s/RKE2 ``registries.yaml``: ours from settings, and ours merged into a node's own file.

k3s and RKE2 own their containerd config: they regenerate certs.d from
``/etc/rancher/{k3s,rke2}/registries.yaml`` at start and delete custom files there, so on those
distributions this file is the way in. Facts that shape the merge (k3s docs "Private Registry
Configuration"; k3s ``pkg/agent/containerd/config.go``; rancher/wharfie ``registries.go``):

- ``mirrors.<host>.endpoint`` is tried in order, then the upstream itself (the "default
  endpoint", unless ``--disable-default-registry-endpoint``): the same semantics as hosts.toml,
  so our cache goes FIRST and the person's own mirrors for that host stay after it.
- ``mirrors.<host>.rewrite`` is copied onto every endpoint of that host, ours included; it is
  the person's and is kept, with a warning (our cache proxies the upstream's names unchanged).
- ``configs.<host>`` (``auth``, ``tls``) is keyed by the host an endpoint points at; never ours
  to touch, and never shown (it holds credentials).
- ``mirrors."*"`` applies to every registry without its own entry: pointed at one of our caches
  it sends ghcr.io, quay.io, ... to a cache that can only proxy one upstream (the bug this
  project fixes). Such an endpoint is removed and every upstream gets its own entry.
- k3s parses the file with go-yaml and refuses to start on a syntax or type error, so a file we
  cannot parse (or whose ``mirrors``/``endpoint`` have the wrong type) is refused here, naming the
  line or key, before anything is sent to the node.

ruamel.yaml (round trip) keeps the person's comments, key order and quoting; PyYAML would drop
every comment. When nothing needs to change the input text is returned unchanged, byte for byte,
so the node step sees an identical file and restarts nothing.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from components.renderers.tls import RANCHER_CA_FILE
from components.settings import Settings

HEADER = "# k3s/RKE2: /etc/rancher/k3s/registries.yaml or /etc/rancher/rke2/registries.yaml\n"
WILDCARD = "*"


class RegistriesYamlError(ValueError):
    """The node's registries.yaml cannot be parsed, or has a shape k3s would refuse."""


@dataclass(frozen=True)
class _Style:
    """Indentation of the person's file, so a merge does not reformat it."""

    mapping: int = 2
    sequence: int = 4
    offset: int = 2


_KEY_LINE = re.compile(r"^( *)(?:\"[^\"]*\"|'[^']*'|[^\s#\-'\"][^:#]*):(?:\s|$)")
_DASH_LINE = re.compile(r"^( *)- ")


def _guess_style(text: str) -> _Style:
    mapping = offset = None
    previous_key_indent: int | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key = _KEY_LINE.match(line)
        dash = _DASH_LINE.match(line)
        if dash and previous_key_indent is not None and offset is None:
            offset = len(dash[1]) - previous_key_indent
        elif key:
            indent = len(key[1])
            if mapping is None and previous_key_indent is not None and indent > previous_key_indent:
                mapping = indent - previous_key_indent
            previous_key_indent = indent
    mapping = mapping or 2
    offset = max(offset if offset is not None else 2, 0)
    return _Style(mapping=mapping, sequence=offset + 2, offset=offset)


def _yaml(style: _Style = _Style()) -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long endpoint or comment
    yaml.indent(mapping=style.mapping, sequence=style.sequence, offset=style.offset)
    return yaml


def _dump(data: Any, style: _Style = _Style()) -> str:
    out = io.StringIO()
    _yaml(style).dump(data, out)
    return out.getvalue()


def registries_yaml(settings: Settings) -> dict:
    """Our mirrors as plain data: one entry per upstream, our cache as its only endpoint; with
    TLS on, each cache's ``configs`` entry names the CA file the node step writes."""
    data: dict = {
        "mirrors": {
            upstream.host: {"endpoint": [settings.endpoint(upstream)]}
            for upstream in settings.upstreams
        }
    }
    configs = our_configs(settings)
    if configs:
        data["configs"] = configs
    return data


def our_configs(settings: Settings) -> dict[str, dict]:
    """``configs."<ip>:<tls port>".tls.ca_file`` per cache (k3s keys configs by the host:port an
    endpoint points at); none with TLS off."""
    if not settings.tls.enabled:
        return {}
    return {
        _cache_netloc(settings.endpoint(upstream)): {"tls": {"ca_file": RANCHER_CA_FILE}}
        for upstream in settings.upstreams
    }


def render_registries_yaml(settings: Settings) -> str:
    """The file a node without a registries.yaml gets (also the ``registriesYaml`` output): the
    same text ``merge_registries_yaml`` writes there."""
    return HEADER + _dump(registries_yaml(settings))


# --- merge into a node's own file --------------------------------------------------------------


@dataclass(frozen=True)
class RegistriesMerge:
    text: str
    changed: bool
    # What was done and what was kept: host names and our endpoints only, never a configs value.
    summary: tuple[str, ...]
    replaced_wildcard: bool


def _cache_netloc(url: str) -> str:
    """``host:port`` an endpoint points at, however it is written (k3s accepts no scheme)."""
    text = url.strip()
    if "://" not in text:
        text = "//" + text
    try:
        return urlsplit(text).netloc.lower()
    except ValueError:
        return text.lower()


def _endpoint_host(url: str) -> str:
    netloc = _cache_netloc(url)
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _parse(text: str) -> Any:
    try:
        return _yaml().load(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = error.problem or error.context or "cannot be parsed"
        raise RegistriesYamlError(f"registries.yaml{line}: {problem}") from None
    except YAMLError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "cannot be parsed"
        raise RegistriesYamlError(f"registries.yaml: {first}") from None


def _line_of(container: Any, key: Any) -> str:
    try:
        return f" (line {container.lc.key(key)[0] + 1})"
    except (AttributeError, KeyError, TypeError):
        return ""


def _check_shape(data: Any) -> CommentedMap:
    """The types go-yaml needs to unmarshal into wharfie's Registry; k3s refuses anything else."""
    if not isinstance(data, CommentedMap):
        raise RegistriesYamlError(
            "registries.yaml: expected a mapping with mirrors/configs at the top level"
        )
    mirrors = data.get("mirrors")
    if mirrors is not None and not isinstance(mirrors, CommentedMap):
        raise RegistriesYamlError(
            f"registries.yaml mirrors{_line_of(data, 'mirrors')}: expected a mapping of "
            "registry host to {endpoint: [...]}"
        )
    for host, mirror in (mirrors or {}).items():
        if not isinstance(host, str):
            raise RegistriesYamlError(
                f"registries.yaml mirrors{_line_of(mirrors, host)}: registry {host!r} is not a "
                "string (quote it)"
            )
        if mirror is None:
            continue
        if not isinstance(mirror, CommentedMap):
            raise RegistriesYamlError(
                f"registries.yaml mirrors.{host}{_line_of(mirrors, host)}: expected a mapping "
                "with endpoint/rewrite"
            )
        endpoint = mirror.get("endpoint")
        if endpoint is not None and not (
            isinstance(endpoint, CommentedSeq) and all(isinstance(e, str) for e in endpoint)
        ):
            raise RegistriesYamlError(
                f"registries.yaml mirrors.{host}.endpoint{_line_of(mirror, 'endpoint')}: "
                "expected a list of URLs"
            )
    configs = data.get("configs")
    if configs is not None and not isinstance(configs, CommentedMap):
        raise RegistriesYamlError(
            f"registries.yaml configs{_line_of(data, 'configs')}: expected a mapping of "
            "registry host to {auth, tls}"
        )
    return data


def _is_ours(entry: Any) -> bool:
    """A configs entry this program wrote: exactly ``tls.ca_file`` = our CA file."""
    return (
        isinstance(entry, dict)
        and set(entry) == {"tls"}
        and isinstance(entry["tls"], dict)
        and dict(entry["tls"]) == {"ca_file": RANCHER_CA_FILE}
    )


def _merge_our_configs(data: CommentedMap, settings: Settings, summary: list[str]) -> bool:
    """Each cache's ``configs`` entry trusts our CA (TLS on); our entries for other addresses
    of the VM (an old port, TLS turned off) go. Everything else in ``configs`` is the node's."""
    wanted = our_configs(settings)
    configs = data.get("configs")
    if configs is None:
        if not wanted:
            return False
        configs = CommentedMap()
        data["configs"] = configs
    if not isinstance(configs, CommentedMap):
        return False
    changed = False
    stale = [k for k in configs if k not in wanted and _is_ours(configs[k])]
    for key in stale:
        del configs[key]
        summary.append(f"registries.yaml: configs.{key}: dropped (ours, no longer a cache)")
        changed = True
    for key, entry in wanted.items():
        current = configs.get(key)
        if current is None:
            configs[key] = CommentedMap(tls=CommentedMap(ca_file=RANCHER_CA_FILE))
        elif isinstance(current, CommentedMap):
            tls = current.get("tls")
            if isinstance(tls, CommentedMap) and tls.get("ca_file") == RANCHER_CA_FILE:
                continue
            if not isinstance(tls, CommentedMap):
                tls = CommentedMap()
                current["tls"] = tls
            tls["ca_file"] = entry["tls"]["ca_file"]
        else:
            continue
        summary.append(f"registries.yaml: configs.{key}.tls.ca_file: {RANCHER_CA_FILE}")
        changed = True
    if stale and not configs:
        del data["configs"]  # only ours were in it
    return changed


def merge_registries_yaml(existing: str | None, settings: Settings) -> RegistriesMerge:
    """Our mirrors merged into ``existing`` (the node's registries.yaml; None: no file).

    Per upstream host: our cache becomes the first endpoint; the node's other endpoints for that
    host follow in their order; an endpoint on the registry VM's address other than the current
    cache (an old port of ours) is dropped. ``mirrors."*"`` endpoints that point at one of our
    caches are removed (the entry too once it has nothing left). Everything else is kept as
    written, comments included. Raises RegistriesYamlError (one line, naming the line or key)
    for a file k3s would refuse.
    """
    if existing is None or not existing.strip():
        text = render_registries_yaml(settings)
        return RegistriesMerge(
            text=text,
            changed=existing != text,
            summary=(f"registries.yaml: new file with {len(settings.upstreams)} mirrors",),
            replaced_wildcard=False,
        )
    data = _parse(existing)
    comments_only = data is None
    if comments_only:
        data = CommentedMap()
    data = _check_shape(data)
    style = _guess_style(existing)
    summary: list[str] = []
    changed = False

    ours = {settings.endpoint(u): u for u in settings.upstreams}
    our_netlocs = {_cache_netloc(url): url for url in ours}
    # A cache's plain port is ours too (the endpoint before TLS): a wildcard naming it is ours.
    our_netlocs.update(
        {
            _cache_netloc(settings.plain_endpoint(u)): settings.endpoint(u)
            for u in settings.upstreams
        }
    )
    vm_host = settings.cache_host.address

    mirrors = data.get("mirrors")
    if mirrors is None:
        mirrors = CommentedMap()
        data["mirrors"] = mirrors
        changed = True

    replaced_wildcard = False
    wildcard = mirrors.get(WILDCARD)
    if isinstance(wildcard, CommentedMap) and isinstance(wildcard.get("endpoint"), CommentedSeq):
        endpoints = wildcard["endpoint"]
        hits = [e for e in endpoints if _cache_netloc(e) in our_netlocs]
        if hits:
            for hit in hits:
                endpoints.remove(hit)
            caches = ", ".join(
                f"the {ours[our_netlocs[_cache_netloc(h)]].host} cache {h}" for h in hits
            )
            if not endpoints and set(wildcard) == {"endpoint"}:
                del mirrors[WILDCARD]
                what = 'removed mirrors."*"'
            else:
                what = 'removed our cache from mirrors."*" (its other endpoints/settings are kept)'
            summary.append(
                f"registries.yaml: {what}: it sent every registry to {caches}, which proxies "
                "one upstream only; each upstream now has its own mirrors entry"
            )
            replaced_wildcard = True
            changed = True

    for endpoint, upstream in ours.items():
        host = upstream.host
        mirror = mirrors.get(host)
        if mirror is None:  # absent, or `docker.io:` with nothing under it
            mirrors[host] = CommentedMap(endpoint=CommentedSeq([endpoint]))
            summary.append(f"registries.yaml: mirrors.{host}: added {endpoint}")
            changed = True
            continue
        endpoints = mirror.get("endpoint")
        if endpoints is None:
            mirror.insert(0, "endpoint", CommentedSeq([endpoint]))
            summary.append(f"registries.yaml: mirrors.{host}: added {endpoint}")
            changed = True
        else:
            current = _cache_netloc(endpoint)
            stale = [
                e for e in endpoints if _endpoint_host(e) == vm_host and _cache_netloc(e) != current
            ]
            for old in stale:
                endpoints.remove(old)
                summary.append(
                    f"registries.yaml: mirrors.{host}: dropped {old} (the registry VM's address, "
                    f"not the current cache {endpoint})"
                )
                changed = True
            if not endpoints or endpoints[0] != endpoint:
                for same in [e for e in endpoints if _cache_netloc(e) == current]:
                    endpoints.remove(same)
                endpoints.insert(0, endpoint)
                others = len(endpoints) - 1
                summary.append(
                    f"registries.yaml: mirrors.{host}: {endpoint} first"
                    + (f", then the node's {others} own endpoint(s)" if others else "")
                )
                changed = True
        if mirror.get("rewrite"):
            summary.append(
                f"warning: registries.yaml mirrors.{host} has rewrite rules: k3s applies them to "
                f"every endpoint, our cache {endpoint} included (it proxies {host} unchanged)"
            )

    changed = _merge_our_configs(data, settings, summary) or changed

    kept_mirrors = sorted(str(h) for h in mirrors if h not in {u.host for u in ours.values()})
    if kept_mirrors:
        summary.append(f"registries.yaml: kept the node's mirrors for {', '.join(kept_mirrors)}")
    wanted = our_configs(settings)
    configs = {k: v for k, v in (data.get("configs") or {}).items() if k not in wanted}
    if configs:
        # Host names only: configs hold credentials (auth) and key paths.
        summary.append(f"registries.yaml: kept configs for {', '.join(sorted(map(str, configs)))}")

    if not changed:
        return RegistriesMerge(existing, False, tuple(summary), False)
    text = _dump(data, style)
    if comments_only:
        text = existing.rstrip("\n") + "\n" + text
    return RegistriesMerge(text, text != existing, tuple(summary), replaced_wildcard)
