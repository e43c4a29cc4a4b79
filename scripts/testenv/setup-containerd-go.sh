#!/usr/bin/env bash
# containerd 2.2 and 2.3 for the real-daemon tests, built from their Go module: Debian packages
# neither (setup-containerd.sh unpacks 1.7 and 2.1 from Debian; 1.6 is bookworm's own package).
#
# The module github.com/containerd/containerd/v2 at each pinned tag comes through the Go module
# proxy (checked against the checksum database as every module is); `containerd`, `ctr` and
# `containerd-shim-runc-v2` are built inside the unpacked module, which is then the main module:
# its own go.mod and go.sum decide every dependency, as in containerd's release build. Flags are
# the release's (Makefile, Makefile.linux and .github/workflows/release/Dockerfile at the tag):
#   containerd, ctr: CGO_ENABLED=1 (the btrfs snapshotter is cgo), -buildmode=pie,
#                    -tags urfave_cli_no_docs, -ldflags "-s -w -X <pkg>/version.Version=vX.Y.Z
#                    -X <pkg>/version.Package=<pkg>"
#   the runc shim:   CGO_ENABLED=0, -tags "urfave_cli_no_docs no_grpc", the same -X flags and
#                    -extldflags "-static"
# (-trimpath stands for the Makefile's -gcflags=-trimpath=$GOPATH/src; version.Revision, the git
# commit, stays empty: a module zip carries no VCS data.) The tests only pull over
# CRI and never start a container, so no runc is needed.
#
# Output: $TOOLCHAIN_CACHE/containerd/<version>/usr/bin/ (outside the clone, see lib.sh), the same
# layout as the Debian unpacks, found by tests/integration/containerd_versions.py. Idempotent: a
# version already built is skipped without touching the network.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/testenv/lib.sh
. scripts/testenv/lib.sh

MODULE=github.com/containerd/containerd/v2
# The tags the tests' expectations were measured on (tests/integration/containerd_versions.py
# names the same versions and checks `containerd --version` against them).
VERSIONS=(2.2.9 2.3.7)
BINARIES=(containerd ctr containerd-shim-runc-v2)
store="$TOOLCHAIN_CACHE/containerd"

built() {
  local dir=$1 binary
  for binary in "${BINARIES[@]}"; do
    [[ -x $dir/usr/bin/$binary ]] || return 1
  done
}

needed=()
for version in "${VERSIONS[@]}"; do
  built "$store/$version" || needed+=("$version")
done
if [[ ${#needed[@]} -eq 0 ]]; then
  log "setup-containerd-go: containerd ${VERSIONS[*]} already built in $store"
  exit 0
fi

if ! command -v go >/dev/null; then
  log "setup-containerd-go: no go toolchain: skipping containerd ${needed[*]} (the tests that need them skip)"
  exit 0
fi
# containerd and ctr are built with cgo, as released: a C compiler and the C library headers.
if ! command -v gcc >/dev/null && can_install; then
  apt_install gcc libc6-dev
fi
if ! command -v gcc >/dev/null; then
  log "setup-containerd-go: no gcc: skipping containerd ${needed[*]} (the tests that need them skip)"
  exit 0
fi

mkdir -p "$store"
# Every clone on the machine shares $store: one setup at a time (setup-containerd.sh too).
exec 9>"$store/.lock"
flock 9

# The Go toolchain that is installed: never let go fetch another one (GOTOOLCHAIN=local).
export GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
go_version=$(go env GOVERSION)

for version in "${needed[@]}"; do
  target="$store/$version"
  built "$target" && continue # built by a run that held the lock before us

  log "setup-containerd-go: downloading module ${MODULE}@v${version}"
  info=$(go mod download -json "${MODULE}@v${version}")
  dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")
  gomod=$(sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' <<<"$info")
  sum=$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"$info")
  if [[ -z $dir || ! -f $dir/go.mod ]]; then
    echo "setup-containerd-go: go mod download gave no module directory:" >&2
    echo "$info" >&2
    exit 1
  fi
  # The module is built as the main module: a replace with a local path would point at a
  # directory the zip does not have. containerd's go.mod has none (checked at 2.2.9 and 2.3.7).
  if go mod edit -json "$gomod" | grep -q '"Replace": \['; then
    echo "setup-containerd-go: ${MODULE}@v${version} has replace directives; build it from a" \
      "wrapper module instead (see the go.mod: $gomod)" >&2
    exit 1
  fi
  needs=$(go mod edit -json "$gomod" | sed -n 's/^[[:space:]]*"Go": "\(.*\)",\{0,1\}$/\1/p' | head -n 1)
  if [[ -n $needs && $(printf '%s\n%s\n' "$needs" "${go_version#go}" | sort -V | head -n 1) != "$needs" ]]; then
    echo "setup-containerd-go: containerd ${version} needs Go ${needs}; this machine has ${go_version}" >&2
    exit 1
  fi

  ldflags="-s -w -X ${MODULE}/version.Version=v${version} -X ${MODULE}/version.Package=${MODULE}"
  rm -rf "$target.tmp"
  mkdir -p "$target.tmp/usr/bin"
  log "setup-containerd-go: building containerd ${version} with ${go_version} -> ${target}"
  start=$SECONDS
  (
    cd "$dir"
    # nice: the machine's cores are shared; this is a prerequisite, not the work.
    for command in containerd ctr; do
      CGO_ENABLED=1 nice -n 10 go build -trimpath -buildmode=pie -tags urfave_cli_no_docs \
        -ldflags "$ldflags" -o "$target.tmp/usr/bin/$command" "./cmd/$command"
    done
    CGO_ENABLED=0 nice -n 10 go build -trimpath -tags "urfave_cli_no_docs no_grpc" \
      -ldflags "$ldflags -extldflags \"-static\"" \
      -o "$target.tmp/usr/bin/containerd-shim-runc-v2" ./cmd/containerd-shim-runc-v2
  )
  cat >"$target.tmp/BUILD_INFO" <<EOF
module ${MODULE}@v${version} ${sum}
go ${go_version} (go.mod needs ${needs:-?})
built in $((SECONDS - start)) s by scripts/testenv/setup-containerd-go.sh
EOF
  rm -rf "$target"
  mv "$target.tmp" "$target"
  "$target/usr/bin/containerd" --version
done
