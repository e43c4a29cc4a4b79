#!/usr/bin/env bash
# Distribution 3.1.1's `registry` command for the tests: Debian packages only 2.8
# (docker-registry), and the registry integration tests run every rendered config on both majors.
#
# Where it comes from, first found wins:
#   1. $REGISTRY_V3_BINARY: a registry v3 binary you provide (checked with --version, used as is);
#   2. $TESTENV_CACHE/distribution-3.1.1/registry: unpacked by an earlier run;
#   3. shared/bin/registry-3.1.1.gz next to the project (../shared/bin; a git worktree sits one
#      level deeper, so each parent directory is looked at), checked against its sha256, then
#      unpacked into $TESTENV_CACHE.
# Neither: say how to get it and exit 0. The tests then skip saying so, or FAIL under CI=true.
# Needs no root and no network. tests/integration/registry_proc.py runs this step itself when the
# unpacked binary is missing, so `pytest` alone works too.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/testenv/lib.sh
. scripts/testenv/lib.sh

VERSION=3.1.1
# sha256 of the unpacked v3.1.1 binary in shared/bin (see shared/bin/README.md for its build).
SHA256=6bcd64a627fbc0b71aafdbf7e66eb1971c6aedeb4b4fb57523743e3aed0b8f9a
dest="$TESTENV_CACHE/distribution-$VERSION/registry"

is_v3() { "$1" --version 2>/dev/null | grep -q " v3\."; }

if [ -n "${REGISTRY_V3_BINARY:-}" ]; then
  if is_v3 "$REGISTRY_V3_BINARY"; then
    log "Distribution 3: using REGISTRY_V3_BINARY=$REGISTRY_V3_BINARY"
    exit 0
  fi
  log "REGISTRY_V3_BINARY=$REGISTRY_V3_BINARY does not print a v3 version with --version" >&2
  exit 1
fi

if [ -x "$dest" ] && is_v3 "$dest"; then
  exit 0
fi

source=""
dir=$(pwd)
while [ "$dir" != "/" ]; do
  dir=$(dirname "$dir")
  if [ -f "$dir/shared/bin/registry-$VERSION.gz" ]; then
    source="$dir/shared/bin/registry-$VERSION.gz"
    break
  fi
done

if [ -z "$source" ]; then
  log "Distribution $VERSION not found: the v3 registry tests will skip (fail under CI=true)."
  echo "    Get the registry binary of v$VERSION, e.g. from the release tarball" \
    "registry_${VERSION}_linux_amd64.tar.gz of distribution/distribution, or" \
    "'docker create --name r registry:$VERSION && docker cp r:/bin/registry .'," \
    "then: export REGISTRY_V3_BINARY=\$PWD/registry"
  exit 0
fi

log "unpacking Distribution $VERSION from $source"
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp "$dest.XXXXXX")
trap 'rm -f "$tmp"' EXIT
gzip -dc "$source" >"$tmp"
got=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "$source: sha256 $got, expected $SHA256: not used" >&2
  exit 1
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
trap - EXIT
is_v3 "$dest"
