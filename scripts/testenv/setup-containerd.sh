#!/usr/bin/env bash
# containerd 1.7 and 2.1 for the real-daemon tests, next to the system's 1.6 (scripts/test.sh
# installs Debian 12's `containerd` package, 1.6.20).
#
# Most clusters run 1.7 (Ubuntu 22.04/24.04, Debian 13) or 2.x (current Kubernetes installs), so
# every test that loads a config or drives a node runs on all three. Debian's archive has 1.7.24
# in trixie and 2.1.9 in sid; their binaries run on bookworm as they are. We fetch the two .debs
# with `apt-get download` against a PRIVATE apt configuration (sources for those suites built from
# the URIs of this machine's own apt sources, private lists/cache/state dirs, an empty dpkg
# status) and unpack them with `dpkg-deb -x` under $TOOLCHAIN_CACHE/containerd/<version>/ (outside
# the clone, see lib.sh: a fresh clone on the same machine finds them): nothing is installed
# system-wide and the system's apt never sees trixie or sid. 2.2 and 2.3, which Debian does not
# package, are built from their Go module by setup-containerd-go.sh into the same layout.
#
# Idempotent: a version whose binaries are already unpacked is skipped (no network). The tests
# find the binaries through tests/integration/containerd_versions.py, which names the same
# versions and checks `containerd --version` against them.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/testenv/lib.sh
. scripts/testenv/lib.sh

# suite upstream-version: the exact builds the tests' expectations were measured on. A suite that
# moved on (sid will) fails here with what it has now, instead of testing another version silently.
PINS=(
  "trixie 1.7.24"
  "sid 2.1.9"
)
BINARIES=(containerd ctr containerd-shim-runc-v2)

if ! is_root; then
  log "setup-containerd: not root: skipping containerd 1.7/2.1 (the tests that need them skip)"
  exit 0
fi
for tool in apt-get apt-cache dpkg-deb; do
  if ! command -v "$tool" >/dev/null; then
    log "setup-containerd: no $tool: skipping containerd 1.7/2.1 (the tests that need them skip)"
    exit 0
  fi
done

store="$TOOLCHAIN_CACHE/containerd"
mkdir -p "$store"
# Every clone on the machine shares $store: one setup at a time (setup-containerd-go.sh too).
exec 9>"$store/.lock"
flock 9

unpacked() {
  local dir=$1 binary
  for binary in "${BINARIES[@]}"; do
    [[ -x $dir/usr/bin/$binary ]] || return 1
  done
}

needed=()
for pin in "${PINS[@]}"; do
  read -r suite version <<<"$pin"
  unpacked "$store/$version" || needed+=("$pin")
done
if [[ ${#needed[@]} -eq 0 ]]; then
  log "setup-containerd: containerd $(for p in "${PINS[@]}"; do printf '%s ' "${p#* }"; done)already in $store"
  exit 0
fi

# The archive URI and keyring of this machine's own Debian sources (deb822 .sources first, then
# one-line sources.list), so the private config reaches the same mirror the system uses.
archive_source() {
  local file uris="" keyring="" suites="" line
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f $file ]] || continue
    uris="" keyring="" suites=""
    while IFS= read -r line || [[ -n $line ]]; do
      if [[ -z ${line//[[:space:]]/} ]]; then
        # End of a stanza: the one for the release itself (not -security, not -updates).
        if [[ $uris && " $suites " == *" $(. /etc/os-release && echo "$VERSION_CODENAME") "* ]]; then
          echo "${uris%% *} ${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}"
          return 0
        fi
        uris="" keyring="" suites=""
        continue
      fi
      case $line in
        URIs:*) uris=$(echo "${line#URIs:}" | xargs) ;;
        Suites:*) suites=$(echo "${line#Suites:}" | xargs) ;;
        Signed-By:*) keyring=$(echo "${line#Signed-By:}" | xargs) ;;
      esac
    done < <(cat "$file"; echo)
  done
  if [[ -f /etc/apt/sources.list ]]; then
    line=$(grep -E '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+[[:space:]]+[a-z]+[[:space:]]' \
      /etc/apt/sources.list | grep -v -e security -e updates | head -n 1 || true)
    if [[ -n $line ]]; then
      echo "$(grep -oE 'https?://[^[:space:]]+' <<<"$line" | head -n 1) /usr/share/keyrings/debian-archive-keyring.gpg"
      return 0
    fi
  fi
  return 1
}

if ! read -r uri keyring < <(archive_source); then
  echo "setup-containerd: no Debian archive found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list" >&2
  exit 1
fi

apt_dir="$store/apt"
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" \
  "$apt_dir/state"
suites=$(for pin in "${needed[@]}"; do printf '%s ' "${pin%% *}"; done)
cat >"$apt_dir/sources.list.d/containerd-tests.sources" <<EOF
Types: deb
URIs: ${uri}
Suites: ${suites% }
Components: main
Signed-By: ${keyring}
EOF
# Nothing of the system's apt configuration is read or written: sources, lists, cache, state,
# preferences and the dpkg status are all private (status=/dev/null: apt sees no installed package
# and resolves nothing against the system's).
apt_options=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=/dev/null"
  -o "Dir::State=$apt_dir/state"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::State::status=/dev/null"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Debug::NoLocking=1"
  # The downloads land in our cache dir, which the _apt sandbox user may not be able to write.
  -o "APT::Sandbox::User=root"
)
log "setup-containerd: reading the package lists of ${suites% } from ${uri} (private apt config)"
apt-get "${apt_options[@]}" update -qq

for pin in "${needed[@]}"; do
  read -r suite version <<<"$pin"
  available=$(apt-cache "${apt_options[@]}" madison containerd | awk -v s="$suite/" '$0 ~ s {print $3}')
  debian_version=$(grep -E "^${version//./\\.}[~+-]" <<<"$available" | head -n 1 || true)
  if [[ -z $debian_version ]]; then
    echo "setup-containerd: ${suite} no longer has containerd ${version} (it has: ${available:-nothing});" \
      "update PINS here and the table in tests/integration/containerd_versions.py" >&2
    exit 1
  fi
  log "setup-containerd: containerd ${debian_version} (${suite}) -> ${store}/${version}"
  debs="$apt_dir/debs/$version"
  rm -rf "$debs"
  mkdir -p "$debs"
  (cd "$debs" && apt-get "${apt_options[@]}" download -qq "containerd=${debian_version}")
  deb=$(find "$debs" -maxdepth 1 -name 'containerd_*.deb' | head -n 1)
  target="$store/$version"
  rm -rf "$target.tmp"
  mkdir -p "$target.tmp"
  dpkg-deb -x "$deb" "$target.tmp"
  echo "$debian_version" >"$target.tmp/DEBIAN_VERSION"
  rm -rf "$target"
  mv "$target.tmp" "$target"
  if ! unpacked "$target"; then
    echo "setup-containerd: ${deb} has no ${BINARIES[*]} under usr/bin" >&2
    exit 1
  fi
  "$target/usr/bin/containerd" --version
done
# The private apt dir (package lists of two suites, the .debs) served this run only: a later run
# finds the unpacked binaries and never reads it.
rm -rf "$apt_dir"
