#!/usr/bin/env bash
# Shared by scripts/test.sh and the scripts/testenv/setup-*.sh steps it runs. Sourced, not run.
# What a setup step builds or downloads goes under $TESTENV_CACHE (default .cache/ in the project,
# gitignored), or under $TOOLCHAIN_CACHE (below) when every clone should share it: a second run on
# the same machine reuses it.

TESTENV_CACHE=${TESTENV_CACHE:-"$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.cache"}
export TESTENV_CACHE

# Toolchains that cost minutes or a download to get (containerd builds and unpacks) live OUTSIDE
# the clone, keyed by version, so every clone on the machine (a fresh CI clone, each worktree)
# finds them without building again. tests/integration/containerd_versions.py reads the same
# variable with the same default.
TOOLCHAIN_CACHE=${REGISTRY_MIRRORS_TOOLCHAIN_CACHE:-"$HOME/.cache/registry-mirrors"}
export TOOLCHAIN_CACHE

log() { printf '\n==> %s\n' "$*"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

can_install() { is_root && command -v apt-get >/dev/null; }

# apt_install PACKAGE...: install the Debian packages that are not installed yet (root only).
apt_install() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  # Another setup step (or a parallel session) may hold the dpkg lock: wait for it.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}
