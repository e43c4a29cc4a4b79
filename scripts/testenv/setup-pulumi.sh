#!/usr/bin/env bash
# The Pulumi engine for tests/engine: the `pulumi` CLI built from its Go module, cached outside
# the clone. No prebuilt Pulumi binary can be downloaded on these machines; the Go module proxy can
# be reached.
#
# Only the CLI: the engine tier runs the project's Python as inline programs (pulumi.automation:
# the program runs in the test process and the CLI gets a --client address), so it needs no
# language host, and it uses no provider plugin (the built-in pulumi:index:Stash stands in where
# the program has a provider resource). What the Go module proxy serves here (HTTP 403 "This
# module version is not available" for the rest, also for their @v/list; a refusal is final):
#   github.com/pulumi/pulumi/pkg/v3 (the CLI)                          served (not v3.271-v3.273)
#   github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3  refused
#   github.com/pulumi/pulumi-command/provider                          refused
#   github.com/pulumi/pulumi-docker/provider/v5                        refused
#   github.com/muhlba91/pulumi-proxmoxve/provider                      refused
# and the two bridged providers would also need modules the terraform bridge imports, all
# refused: github.com/pulumi/pulumi-java v1.30.0,
# .../pulumi-dotnet/pulumi-language-dotnet/v3 v3.107.1, github.com/pulumi/pulumi-yaml v1.36.0.
# tests/engine_plugins takes plugin binaries built elsewhere, by hand (README "Tests").
#
# Cache: outside the clone, so a clean clone on the same machine reuses it:
#   ${REGISTRY_MIRRORS_TOOLCHAIN_CACHE:-~/.cache/registry-mirrors}/pulumi/<cli version>-<recipe>/
#     bin/        pulumi
#     home/       PULUMI_HOME (empty: no plugin is installed)
#     build/cli/  the generated wrapper module the CLI is built from (not part of the repository)
#     env         PATH, PULUMI_HOME and the offline switches, for tests (tests/engine/toolchain.py)
#     build.log   what was built, when, and how long it took
# <recipe> is a hash of this file: a changed recipe (or version) gets a new directory, a second run
# of the same recipe finds everything and does nothing (no network). The Go module and build
# caches stay in Go's default places ($HOME/go, $HOME/.cache/go-build), so a rebuild after a
# recipe change mostly links.
#
# Exit 0 with a message when the CLI cannot be had (the engine tests then skip, or FAIL under
# CI=true); exit 1 when a build that should work fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/testenv/lib.sh
. scripts/testenv/lib.sh

# The CLI: the newest pkg/v3 the proxy serves that builds (v3.270.0-v3.273.0 are refused). It
# must be at least the pip SDK's version (pulumi 3.272.0, PyPI's newest); checked below.
CLI_VERSION=${PULUMI_CLI_VERSION:-3.277.0}
CLI_MODULE=github.com/pulumi/pulumi/pkg/v3
SDK_MODULE=github.com/pulumi/pulumi/sdk/v3
# The release build's flags (goreleaser in pulumi/pulumi): static, no cgo user lookup, no gRPC
# tracing, the version stamped where `pulumi version` and the plugin host read it.
GO_TAGS=osusergo,grpcnotrace

if ! command -v go >/dev/null; then
  log "setup-pulumi: no Go toolchain: skipping the Pulumi engine (tests/engine skip; fail under CI=true)"
  exit 0
fi

recipe=$(sha256sum "$0" | cut -c1-12)
root=${REGISTRY_MIRRORS_TOOLCHAIN_CACHE:-$HOME/.cache/registry-mirrors}/pulumi
dest="$root/$CLI_VERSION-$recipe"
bin="$dest/bin"
home="$dest/home"
mkdir -p "$bin" "$home"
# One build at a time per cache: two clones on one machine (or two lanes) wait for the first.
exec 9>"$root/.lock"
flock 9

note() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$dest/build.log"; }

# version_ge A B: A >= B as dotted versions.
version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]; }

# The CLI must be at least as new as the pip SDK the program runs with.
check_sdk() {
  local python=.venv/bin/python
  [ -x "$python" ] || {
    log "setup-pulumi: no .venv yet: the CLI version is not checked against the pip SDK"
    return 0
  }
  local sdk
  sdk=$("$python" -c 'import importlib.metadata as m; print(m.version("pulumi"))' 2>/dev/null) || {
    echo "setup-pulumi: the pulumi pip package is not installed in .venv" >&2
    return 1
  }
  if ! version_ge "$CLI_VERSION" "$sdk"; then
    echo "setup-pulumi: CLI $CLI_VERSION is older than the pip SDK pulumi $sdk: raise CLI_VERSION" >&2
    return 1
  fi
}
check_sdk

fail() {
  echo "setup-pulumi: $*" >&2
  exit 1
}

# module_json MODULE@VERSION FIELD: a field of `go mod download -json` (which fetches the module
# into the module cache), or fail with the proxy's answer.
module_json() {
  local out
  out=$(go mod download -json "$1" 2>/dev/null || true)
  python3 -c '
import json, sys
d = json.loads(sys.argv[1] or "{}")
if d.get("Error") or not d.get(sys.argv[2]):
    sys.exit(d.get("Error") or "no answer from go mod download")
print(d[sys.argv[2]])
' "$out" "$2"
}

# build_cli: a small wrapper module that requires pkg/v3 and sdk/v3 at the same version. pkg's
# own go.mod replaces sdk/v3 with ../sdk (a path in pulumi's repository), which `go install
# pkg@version` refuses; a wrapper needs no path replace because it requires sdk/v3 itself, and
# copies pkg's other (module) replaces, which only apply in the main module.
build_cli() {
  local wrapper="$dest/build/cli" started gomod go_version replace_lines
  local -a replaces
  started=$(date +%s)
  log "setup-pulumi: building pulumi $CLI_VERSION from $CLI_MODULE (minutes, once)"
  if ! gomod=$(module_json "$CLI_MODULE@v$CLI_VERSION" GoMod); then
    # The proxy's answer is final (it refused v3.270.0-v3.273.0 here): the rest of the tests
    # still run, the engine tests skip or fail under CI=true.
    log "setup-pulumi: the Go module proxy does not give $CLI_MODULE@v$CLI_VERSION: no Pulumi engine;" \
      "set PULUMI_CLI_VERSION to a version it serves (at least the pip SDK's)"
    rm -rf "$dest"
    exit 0
  fi
  go_version=$(go mod edit -json "$gomod" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Go"])')
  replace_lines=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    old, new = r["Old"], r["New"]
    if new.get("Version"):  # a module replace; the path replaces point into pulumi/pulumi itself
        at = "@" + old["Version"] if old.get("Version") else ""
        print("-replace={}{}={}@{}".format(old["Path"], at, new["Path"], new["Version"]))
') || fail "cannot read the replaces of $gomod"
  replaces=()
  [ -z "$replace_lines" ] || mapfile -t replaces <<<"$replace_lines"
  rm -rf "$wrapper"
  mkdir -p "$wrapper"
  # The wrapper asks for the Go version pkg asks for: no newer toolchain than pkg needs.
  printf 'module registry-mirrors.test/pulumi-cli\n\ngo %s\n' "$go_version" >"$wrapper/go.mod"
  (cd "$wrapper" && go mod edit -require="$CLI_MODULE@v$CLI_VERSION" \
    -require="$SDK_MODULE@v$CLI_VERSION" "${replaces[@]}") || fail "go mod edit in $wrapper"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/pulumi"\n' "$CLI_MODULE" \
    >"$wrapper/tools.go"
  (cd "$wrapper" && GOFLAGS=-mod=mod go get "$CLI_MODULE/cmd/pulumi@v$CLI_VERSION") \
    >"$wrapper/get.log" 2>&1 || {
    tail -n 20 "$wrapper/get.log" >&2
    fail "go get $CLI_MODULE/cmd/pulumi@v$CLI_VERSION failed ($wrapper/get.log)"
  }
  (cd "$wrapper" && CGO_ENABLED=0 go build -trimpath -tags "$GO_TAGS" \
    -ldflags "-s -w -X $SDK_MODULE/go/common/version.Version=v$CLI_VERSION" \
    -o "$bin/pulumi.tmp" "$CLI_MODULE/cmd/pulumi") >"$wrapper/build.log" 2>&1 || {
    tail -n 20 "$wrapper/build.log" >&2
    fail "building pulumi $CLI_VERSION failed ($wrapper/build.log)"
  }
  mv -f "$bin/pulumi.tmp" "$bin/pulumi"
  note "pulumi $CLI_VERSION built in $(($(date +%s) - started))s"
  log "setup-pulumi: pulumi $CLI_VERSION built in $(($(date +%s) - started))s"
}

# Builds of other recipes are left alone: another clone on this machine may be testing with one.
[[ -x $bin/pulumi ]] || build_cli

# What every later `pulumi` here runs with: this PULUMI_HOME only, no plugin from PATH, never a
# download or an update check.
offline_env=(
  PULUMI_HOME="$home"
  PULUMI_SKIP_UPDATE_CHECK=true
  PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
  PULUMI_IGNORE_AMBIENT_PLUGINS=true
)
got=$(env "${offline_env[@]}" "$bin/pulumi" version)
if [ "$got" != "v$CLI_VERSION" ]; then
  echo "setup-pulumi: $bin/pulumi says $got, expected v$CLI_VERSION" >&2
  exit 1
fi

# The environment for tests, rewritten on every run (cheap): KEY=VALUE lines without quotes or
# spaces, for `set -a; . env; set +a` in bash or tests/engine/toolchain.py.
{
  echo "# Written by scripts/testenv/setup-pulumi.sh (recipe $recipe); KEY=VALUE lines, no quoting."
  echo "PATH=$bin:\$PATH"
  printf '%s\n' "${offline_env[@]}"
  echo "PULUMI_CLI_VERSION=$CLI_VERSION"
} >"$dest/env.tmp"
mv -f "$dest/env.tmp" "$dest/env"

log "setup-pulumi: pulumi $CLI_VERSION ready ($dest/env)"
