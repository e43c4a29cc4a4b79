"""registries.yaml: ours from settings, and ours merged into the formats k3s documents
(docs.k3s.io "Private Registry Configuration": mirrors with endpoint and rewrite, configs with
auth and tls, the "*" wildcard)."""

from __future__ import annotations

import string
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from components.renderers.registries_yaml import (
    RegistriesYamlError,
    merge_registries_yaml,
    render_registries_yaml,
)
from components.settings import Settings, load_settings
from tests.sample import sample_raw, sample_settings


def _settings(tls: bool) -> Settings:
    raw = sample_raw()
    raw["tls"] = {"enabled": tls}
    return load_settings(raw)


# The merge rules, shown on plain HTTP endpoints (TLS off); what TLS adds (https:// endpoints,
# configs.<cache>.tls.ca_file) has its own tests at the end, with TLS_SETTINGS (the default).
SETTINGS = _settings(tls=False)
TLS_SETTINGS = sample_settings()
OURS = {u.host: SETTINGS.endpoint(u) for u in SETTINGS.upstreams}
DOCKER_CACHE = OURS["docker.io"]


def test_one_mirror_per_upstream_no_wildcard():
    data = yaml.safe_load(render_registries_yaml(SETTINGS))
    assert data == {
        "mirrors": {
            "docker.io": {"endpoint": ["http://10.0.20.10:5000"]},
            "ghcr.io": {"endpoint": ["http://10.0.20.10:5010"]},
            "quay.io": {"endpoint": ["http://10.0.20.10:5020"]},
            "registry.k8s.io": {"endpoint": ["http://10.0.20.10:5030"]},
            "reg.kyverno.io": {"endpoint": ["http://10.0.20.10:5040"]},
        }
    }


@pytest.mark.parametrize("existing", [None, "", "\n"])
def test_a_node_without_a_file_gets_exactly_the_exported_registries_yaml(existing):
    merged = merge_registries_yaml(existing, SETTINGS)
    assert merged.text == render_registries_yaml(SETTINGS)
    assert merged.changed


# The documented formats, as a person would write them (quotes, comments, two-space lists).
DOCUMENTED = """\
# Written by hand: keep this comment.
mirrors:
  docker.io:
    endpoint:
      - "https://registry.example.com:5000"   # our company mirror
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
  "*":
    endpoint:
      - "http://10.0.20.10:5000"
  registry.example.com:
    endpoint:
      - "https://registry.example.com:443"
configs:
  "registry.example.com:5000":
    auth:
      username: builder # this is the registry username
      password: s3cr3t-PASSWORD
    tls:
      cert_file: /etc/ssl/client.crt
      key_file: /etc/ssl/client.key
      ca_file: /etc/ssl/ca.crt
  "*":
    tls:
      insecure_skip_verify: true
"""


def test_documented_file_merge_keeps_everything_the_person_wrote():
    merged = merge_registries_yaml(DOCUMENTED, SETTINGS)
    data = yaml.safe_load(merged.text)
    before = yaml.safe_load(DOCUMENTED)

    assert data["configs"] == before["configs"]
    assert data["mirrors"]["registry.example.com"] == before["mirrors"]["registry.example.com"]
    assert data["mirrors"]["docker.io"] == {
        "endpoint": [DOCKER_CACHE, "https://registry.example.com:5000"],
        "rewrite": {"^rancher/(.*)": "mirrorproject/rancher-images/$1"},
    }
    for host, endpoint in OURS.items():
        assert data["mirrors"][host]["endpoint"][0] == endpoint
    # The wildcard to the Docker Hub cache is gone, replaced by one entry per upstream.
    assert "*" not in data["mirrors"]
    assert merged.replaced_wildcard
    # Comments and the person's quoting survive.
    assert "# Written by hand: keep this comment." in merged.text
    assert "# our company mirror" in merged.text
    assert "username: builder # this is the registry username" in merged.text
    assert '"^rancher/(.*)": "mirrorproject/rancher-images/$1"' in merged.text


def test_summary_reports_the_wildcard_and_never_shows_credentials():
    merged = merge_registries_yaml(DOCUMENTED, SETTINGS)
    text = "\n".join(merged.summary)
    assert 'removed mirrors."*"' in text
    assert "the docker.io cache http://10.0.20.10:5000" in text
    assert "rewrite rules" in text  # the person's rewrite now also applies to our cache
    assert "kept configs for *, registry.example.com:5000" in text
    for secret in ("s3cr3t-PASSWORD", "builder", "client.key", "ca.crt"):
        assert secret not in text


def test_wildcard_with_other_endpoints_keeps_them():
    existing = 'mirrors:\n  "*":\n    endpoint:\n      - "http://10.0.20.10:5000"\n      - "https://mirror.example.org"\n'
    merged = merge_registries_yaml(existing, SETTINGS)
    data = yaml.safe_load(merged.text)
    assert data["mirrors"]["*"] == {"endpoint": ["https://mirror.example.org"]}
    assert merged.replaced_wildcard
    assert any("removed our cache from mirrors" in line for line in merged.summary)


def test_wildcard_to_someone_elses_mirror_is_left_alone():
    existing = 'mirrors:\n  "*":\n    endpoint:\n      - "https://mirror.example.org"\n'
    merged = merge_registries_yaml(existing, SETTINGS)
    assert yaml.safe_load(merged.text)["mirrors"]["*"] == {
        "endpoint": ["https://mirror.example.org"]
    }
    assert not merged.replaced_wildcard


def test_endpoint_written_without_scheme_still_counts_as_our_cache():
    # k3s accepts endpoints without a scheme (https then, unless localhost).
    existing = 'mirrors:\n  "*":\n    endpoint: ["10.0.20.10:5000/v2"]\n'
    assert merge_registries_yaml(existing, SETTINGS).replaced_wildcard


def test_an_old_cache_port_on_the_vm_is_dropped_and_reported():
    existing = "mirrors:\n  ghcr.io:\n    endpoint:\n      - http://10.0.20.10:5099\n      - https://ghcr-mirror.example\n"
    merged = merge_registries_yaml(existing, SETTINGS)
    data = yaml.safe_load(merged.text)
    assert data["mirrors"]["ghcr.io"]["endpoint"] == [
        OURS["ghcr.io"],
        "https://ghcr-mirror.example",
    ]
    assert any("dropped http://10.0.20.10:5099" in line for line in merged.summary)


def test_already_merged_file_is_returned_byte_for_byte():
    merged = merge_registries_yaml(DOCUMENTED, SETTINGS)
    again = merge_registries_yaml(merged.text, SETTINGS)
    assert again.text == merged.text
    assert not again.changed
    assert not again.replaced_wildcard


def test_no_op_keeps_an_unusual_layout_untouched():
    # A document marker, flow style, extra spaces: nothing to change, so nothing is re-dumped
    # (ruamel would normalise all three).
    existing = "---\nmirrors:\n" + "".join(
        f"  {host}:   {{ endpoint: [ '{endpoint}' ] }}\n" for host, endpoint in OURS.items()
    )
    merged = merge_registries_yaml(existing, SETTINGS)
    assert merged.text == existing
    assert not merged.changed


def test_four_space_indentation_is_kept():
    existing = "mirrors:\n    example.org:\n        endpoint:\n        - https://example.org\n"
    merged = merge_registries_yaml(existing, SETTINGS)
    assert merged.text.startswith(existing)
    assert "    ghcr.io:\n        endpoint:\n        - http://10.0.20.10:5010\n" in merged.text


def test_comment_only_file_keeps_its_comments():
    existing = "# nothing here yet\n"
    merged = merge_registries_yaml(existing, SETTINGS)
    assert merged.text.startswith("# nothing here yet\n")
    assert yaml.safe_load(merged.text) == yaml.safe_load(render_registries_yaml(SETTINGS))


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        ("mirrors:\n  docker.io:\n    endpoint: [\n", r"^registries.yaml line 4: "),
        ("mirrors:\n\tdocker.io: {}\n", r"^registries.yaml line 2: .*'\\t'"),
        ("mirrors:\n  a.io: {}\n  a.io: {}\n", r"^registries.yaml line 3: found duplicate key"),
        (
            "mirrors:\n  docker.io:\n    endpoint: http://x\n",
            r"^registries.yaml mirrors.docker.io.endpoint \(line 3\): expected a list of URLs$",
        ),
        ("mirrors:\n  - docker.io\n", r"^registries.yaml mirrors \(line 1\): expected a mapping"),
        ("- a\n", r"^registries.yaml: expected a mapping with mirrors/configs"),
        ("configs: [a]\n", r"^registries.yaml configs \(line 1\): expected a mapping"),
    ],
)
def test_unparsable_or_mis_typed_file_is_refused_naming_the_line(existing, message):
    with pytest.raises(RegistriesYamlError, match=message) as error:
        merge_registries_yaml(existing, SETTINGS)
    assert "\n" not in str(error.value)


# --- properties --------------------------------------------------------------------------------

_label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
_host = st.builds(
    lambda a, b, port: f"{a}.{b}" + (f":{port}" if port else ""),
    _label,
    st.sampled_from(["io", "example", "lan"]),
    st.one_of(st.none(), st.integers(1, 65535)),
)
_endpoint = st.one_of(
    st.builds(lambda scheme, host: f"{scheme}://{host}", st.sampled_from(["http", "https"]), _host),
    _host,  # k3s accepts a bare host[:port]
    st.sampled_from(list(OURS.values())),
)
_scalar = st.one_of(st.booleans(), st.integers(-5, 5), _label)
_secret = st.builds(lambda s: f"SECRET-{s}", _label)
_config = st.fixed_dictionaries(
    {},
    optional={
        "auth": st.fixed_dictionaries(
            {"username": _secret, "password": _secret},
            optional={"auth": _secret, "identity_token": _secret},
        ),
        "tls": st.fixed_dictionaries(
            {},
            optional={
                "ca_file": _label,
                "cert_file": _label,
                "key_file": _label,
                "insecure_skip_verify": st.booleans(),
            },
        ),
    },
)
_mirror = st.fixed_dictionaries(
    {},
    optional={
        "endpoint": st.lists(_endpoint, max_size=4),
        "rewrite": st.dictionaries(_label, _label, max_size=2),
        "x-unknown": _scalar,
    },
)
_mirror_host = st.one_of(_host, st.sampled_from([*OURS, "*"]))
_document = st.fixed_dictionaries(
    {},
    optional={
        "mirrors": st.dictionaries(_mirror_host, st.one_of(st.none(), _mirror), max_size=6),
        "configs": st.dictionaries(st.one_of(_host, st.just("*")), _config, max_size=3),
        "x-top": _scalar,
    },
)


def _as_text(document: dict[str, Any], flow: bool) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=flow) if document else ""


def _at_vm(endpoint: str) -> bool:
    return endpoint.split("://")[-1].split("/")[0].rsplit(":", 1)[0] == SETTINGS.cache_host.address


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_document, st.booleans())
def test_merge_keeps_every_key_it_does_not_own_and_is_idempotent(document, flow):
    text = _as_text(document, flow)
    merged = merge_registries_yaml(text, SETTINGS)
    result = yaml.safe_load(merged.text)

    # Idempotent, byte for byte.
    again = merge_registries_yaml(merged.text, SETTINGS)
    assert again.text == merged.text
    assert not again.changed

    # Nothing outside mirrors changes.
    for key, value in document.items():
        if key != "mirrors":
            assert result[key] == value
    mirrors_before = document.get("mirrors") or {}
    mirrors_after = result["mirrors"]
    for host, mirror in mirrors_before.items():
        mirror = mirror or {}
        if host == "*":
            left = [e for e in mirror.get("endpoint") or [] if e not in OURS.values()]
            rest = {k: v for k, v in mirror.items() if k != "endpoint"}
            if not left and not rest and mirror.get("endpoint"):
                assert "*" not in mirrors_after
            else:
                after = mirrors_after["*"] or {}
                assert {k: v for k, v in after.items() if k != "endpoint"} == rest
            continue
        if host not in OURS:
            assert mirrors_after[host] == mirrors_before[host]
            continue
        after = mirrors_after[host]
        # Ours: every key but endpoint kept; our cache first; the person's endpoints kept
        # (except ones on the registry VM's own address, which are ours).
        assert {k: v for k, v in after.items() if k != "endpoint"} == {
            k: v for k, v in mirror.items() if k != "endpoint"
        }
        assert after["endpoint"][0] == OURS[host]
        for endpoint in mirror.get("endpoint") or []:
            if not _at_vm(endpoint):
                assert endpoint in after["endpoint"]
        assert set(after["endpoint"][1:]) <= set(mirror.get("endpoint") or [])
    for host, endpoint in OURS.items():
        assert mirrors_after[host]["endpoint"][0] == endpoint

    # Credentials never reach a summary line.
    assert "SECRET-" not in "\n".join(merged.summary)


# --- TLS on (the default) -----------------------------------------------------------------------
def test_with_tls_each_cache_is_https_and_trusts_our_ca_file():
    data = yaml.safe_load(render_registries_yaml(TLS_SETTINGS))
    assert data["mirrors"]["docker.io"] == {"endpoint": ["https://10.0.20.10:5002"]}
    # k3s keys configs by the host:port an endpoint points at.
    assert data["configs"]["10.0.20.10:5002"] == {
        "tls": {"ca_file": "/etc/rancher/registry-mirrors-ca.pem"}
    }
    assert set(data["configs"]) == {f"10.0.20.10:{u.resolved_tls_port}"
                                    for u in TLS_SETTINGS.upstreams}  # fmt: skip
    assert "insecure_skip_verify" not in render_registries_yaml(TLS_SETTINGS)


def test_switching_a_node_to_tls_replaces_our_plain_endpoint_and_keeps_its_configs():
    """A node merged while TLS was off: the plain endpoint of our cache goes (whoever answers
    for the VM's address could serve tags over it once the https:// one fails), the https://
    one comes first, the node's own mirror and configs stay; the merge is idempotent; and
    turning TLS off again drops only the configs entries that are ours."""
    before_tls = merge_registries_yaml(DOCUMENTED, SETTINGS).text
    merged = merge_registries_yaml(before_tls, TLS_SETTINGS)
    data = yaml.safe_load(merged.text)
    assert data["mirrors"]["docker.io"]["endpoint"] == [
        "https://10.0.20.10:5002", "https://registry.example.com:5000"
    ]  # fmt: skip
    assert not any("10.0.20.10:5000" in e for m in data["mirrors"].values()
                   for e in m.get("endpoint", []))  # fmt: skip
    assert (
        data["configs"]["registry.example.com:5000"]
        == yaml.safe_load(DOCUMENTED)["configs"]["registry.example.com:5000"]
    )
    assert data["configs"]["10.0.20.10:5012"]["tls"]["ca_file"].endswith("registry-mirrors-ca.pem")
    assert "username: builder # this is the registry username" in merged.text
    assert not merge_registries_yaml(merged.text, TLS_SETTINGS).changed
    back = yaml.safe_load(merge_registries_yaml(merged.text, SETTINGS).text)
    assert set(back["configs"]) == {"registry.example.com:5000", "*"}
    assert back["mirrors"]["docker.io"]["endpoint"][0] == "http://10.0.20.10:5000"
