"""The docker client stand-in that runs scripts/vm/registry-maintenance.sh for real without a Docker
engine: the registry integration tests and bench/cache_evict.py use it."""

from __future__ import annotations

# A stand-in for the docker client: `start NAME` serves CONFIG_ROOT/NAME/config.yml with the real
# binary of the major under test (detached, pid in STATE/NAME.pid, the container's env), `stop
# [--time N] NAME` does what docker does: SIGTERM, wait for the exit, SIGKILL after N seconds
# (docker's default 10), `inspect` answers the two questions the script asks (image,
# config-path label). `logs --timestamps NAME` prints the registry's output with docker's UTC
# RFC 3339 stamp (to the second) before each line (every line: --since only narrows what docker
# prints, and the script keeps the latest pull either way); `stats` prints docker's MemPerc and
# MemUsage from the real process's VmRSS against FAKE_DOCKER_MEMORY_LIMIT_MB (default 1024).
# Every call is appended to STATE/calls so the test can check the script's order and arguments:
# stop, GC, start.
FAKE_DOCKER = r"""#!/usr/bin/env bash
set -euo pipefail
echo "$*" >>"$FAKE_DOCKER_STATE/calls"
action=$1
if [[ $action == inspect ]]; then
    case $3 in
    *Config.Image*) echo sha256:fake-image-id ;;
    *registry-mirrors.config-path*) echo "${FAKE_DOCKER_CONFIG_LABEL:-}" ;;
    esac
    exit 0
fi
[[ ${FAKE_DOCKER_RECORD_ONLY:-0} == 1 ]] && exit 0
name=${!#}
pidfile="$FAKE_DOCKER_STATE/$name.pid"
grace=10
[[ ${2:-} == --time ]] && grace=$3
stop() {
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    # Exited, or a zombie of an exited parent: either way it no longer serves.
    while [[ -e /proc/$pid ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "killed $pid" >>"$FAKE_DOCKER_STATE/calls"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.05
    done
    rm -f "$pidfile"
}
stamp() {
    # Not the caller's stdout: the test waits for its EOF. awk, not a bash read loop (which reads
    # a pipe a byte at a time and would hold the registry back on its log writes under load).
    # Docker stamps nanoseconds; the script reads the seconds.
    exec awk '{
        printf "%s.000000000Z %s\n", strftime("%Y-%m-%dT%H:%M:%S", systime(), 1), $0
        fflush()
    }' >>"$FAKE_DOCKER_STATE/$name.log" 2>&1
}
start() {
    setsid "$FAKE_REGISTRY_BINARY" serve "$REGISTRY_CONFIG_ROOT/$name/config.yml" \
        > >(stamp) 2>&1 </dev/null &
    echo $! >"$pidfile"
}
stats() {
    local limit=${FAKE_DOCKER_MEMORY_LIMIT_MB:-1024} kb=0
    [[ -f $pidfile ]] && kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$pidfile")/status")
    awk -v kb="${kb:-0}" -v mb="$limit" \
        'BEGIN {printf "%.2f%% %.2fMiB / %dMiB\n", kb / 1024 / mb * 100, kb / 1024, mb}'
}
case $action in
stop) stop ;;
start) start ;;
restart) stop; start ;;
logs) cat "$FAKE_DOCKER_STATE/$name.log" 2>/dev/null || true ;;
stats) stats ;;
*) echo "fake docker: unsupported $action" >&2; exit 1 ;;
esac
"""
