#!/usr/bin/env bash
# registry-maintenance gc|restart CONTAINER: garbage-collect or restart one Distribution cache.
# registry-maintenance memory CONTAINER PERCENT: restart it only above PERCENT of its memory limit.
# registry-maintenance evict CONTAINER BUDGET_BYTES: keep it within its size budget.
# registry-maintenance disk THRESHOLD_PERCENT [CONTAINER=BUDGET_BYTES...]: report the cache disk.
#
#   gc       stop the registry, run `registry garbage-collect` on its config and data in a
#            one-off container, start it again. Distribution corrupts a SERVING registry when GC
#            runs under it (stale in-memory descriptor cache: re-pulls answer 200 with 0 bytes),
#            hence the stop. Never --delete-untagged: it deletes the per-platform child manifests
#            of multi-arch indexes, which containerd pulls by digest. Logs how long the cache
#            was down (drain, GC, start).
#   restart  restart it, on the schedule the operator chose (registry.restart.mode: schedule).
#            Skipped while a GC of the same registry holds the lock; a GC waits for a restart.
#   memory   hourly (registry.restart.mode: memory, the default): restart it, drained, only when
#            `docker stats` shows PERCENT % of its memory limit or more. With the blob descriptor
#            cache off neither major's memory grows per request (measured:
#            docs/measurements/drain-and-memory.md), so a restart on the clock frees nothing.
#   evict    hourly: fold the access log into the last-pull record; over BUDGET_BYTES, stop the
#            registry (drained), unlink the least recently pulled repositories (never one pulled
#            in the last day) down to 90 % of the budget, GC as above, start it again
#            (cache-budget.sh says why each step is so).
#
# Every stop drains: the rendered config sets http.draintimeout, so on docker's SIGTERM the
# registry refuses new connections at once (nodes go to the upstream) and finishes the blob
# transfers in flight before it exits. docker waits REGISTRY_STOP_TIMEOUT seconds before its
# SIGKILL: longer than the drain (components/renderers/registry_config.py STOP_TIMEOUT_SECONDS,
# also the container's own StopTimeout), so a pull in flight is never cut.
#   disk     print the data filesystem's usage and, per cache, its size, budget (given, or the
#            last `evict` run's), oldest last pull, what the next eviction would remove and how
#            long its last GC kept it down, as key=value lines on stdout (read by
#            scripts/verify.py); log one line, and a WARNING when the usage reaches
#            THRESHOLD_PERCENT. Changes nothing; needs no root.
#
# Parameters (environment; defaults are the VM's real setup, tests stand the binary in):
#   REGISTRY_DOCKER       docker client                         (default: docker)
#   REGISTRY_GC_COMMAND   command that takes `garbage-collect CONFIG` with the config's HOST path
#                         (default: a one-off container of the registry's own image)
#   REGISTRY_CONFIG_ROOT  config dirs, CONFIG_ROOT/NAME/config.yml  (default: /etc/docker-registry)
#   REGISTRY_DATA_ROOT    data dirs, DATA_ROOT/NAME                 (default: /var/lib/registry)
#   REGISTRY_LOCK_DIR     lock files                                (default: /run/lock)
#   REGISTRY_GC_LOCK_WAIT seconds a GC waits for the lock           (default: 900)
#   REGISTRY_STOP_TIMEOUT seconds docker waits before SIGKILL       (default: 75, the drain + 15)
#   REGISTRY_STATE_ROOT   last-pull record, budget, last GC's downtime, STATE_ROOT/NAME/
#                                                                   (default: /var/lib/registry-maintenance)
#   REGISTRY_EVICT_MIN_AGE seconds since its last pull before a repository may be evicted
#                                                                   (default: 86400)
#   REGISTRY_EVICT_LOW_WATER_PERCENT an eviction goes down to this share of the budget (default: 90)
set -euo pipefail

usage() {
    echo "usage: registry-maintenance gc|restart CONTAINER | memory CONTAINER PERCENT |" \
        "evict CONTAINER BUDGET_BYTES | disk THRESHOLD_PERCENT [CONTAINER=BUDGET_BYTES...]" >&2
    exit 2
}

[[ $# -ge 2 ]] || usage
action=$1
name=$2

docker=${REGISTRY_DOCKER:-docker}
config_root=${REGISTRY_CONFIG_ROOT:-/etc/docker-registry}
data_root=${REGISTRY_DATA_ROOT:-/var/lib/registry}
lock_dir=${REGISTRY_LOCK_DIR:-/run/lock}
gc_lock_wait=${REGISTRY_GC_LOCK_WAIT:-900}
stop_timeout=${REGISTRY_STOP_TIMEOUT:-75}
state_root=${REGISTRY_STATE_ROOT:-/var/lib/registry-maintenance}
evict_min_age=${REGISTRY_EVICT_MIN_AGE:-86400}
evict_low_water=${REGISTRY_EVICT_LOW_WATER_PERCENT:-90}
# Set by the component on each container (components/renderers/registry_config.py): where that
# image reads its config. Containers made before the label existed all ran Distribution 2.x.
config_path_label=registry-mirrors.config-path
v2_config_path=/etc/docker/registry/config.yml

log() {
    # cron pipes stderr to `logger -t registry-maintenance`: one grep-able tag.
    printf 'registry-maintenance[%s %s]: %s\n' "$action" "$name" "$*" >&2
}

# shellcheck source=scripts/vm/cache-budget.sh
. "$(dirname "$0")/cache-budget.sh"

disk_report() {
    local threshold=$1 size used avail percent
    shift
    [[ -d $data_root ]] || {
        log "ERROR: no data directory at $data_root"
        exit 1
    }
    # Bytes, POSIX format: one line per filesystem, whatever the locale.
    read -r size used avail percent < <(df -P -B1 "$data_root" | awk 'NR == 2 {print $2, $3, $4, $5}')
    percent=${percent%\%}
    echo "path=$data_root"
    echo "size_bytes=$size"
    echo "used_bytes=$used"
    echo "available_bytes=$avail"
    echo "used_percent=$percent"
    echo "threshold_percent=$threshold"
    local dir bytes
    for dir in "$data_root"/*/; do
        [[ -d $dir ]] || continue
        # A blob deleted while du walks (TTL expiry) makes du complain but still total the rest.
        bytes=$(du -s -B1 "$dir" 2>/dev/null | cut -f1) || true
        echo "cache=$(basename "$dir") $bytes"
    done
    local cache budget pair
    for dir in "$data_root"/*/; do
        [[ -d $dir ]] || continue
        cache=$(basename "$dir")
        budget=
        for pair in "$@"; do
            [[ ${pair%%=*} == "$cache" ]] && budget=${pair#*=}
        done
        budget_report "$cache" "$budget"
    done
    if ((percent >= threshold)); then
        log "WARNING: cache disk $data_root is ${percent}% full (threshold ${threshold}%):" \
            "lower the caches' budgets (registry.cacheBudget, upstreams[].cacheBudget)" \
            "or grow the disk (vm.diskGb; on an existing host, its own disk)"
    else
        log "cache disk $data_root ${percent}% full (threshold ${threshold}%)"
    fi
}

case $action in
gc | restart) [[ $# -eq 2 && $name =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ ]] || usage ;;
memory)
    [[ $# -eq 3 && $name =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ && $3 =~ ^[0-9]{1,3}$ ]] || usage
    ((10#$3 >= 1 && 10#$3 <= 100)) || usage
    ;;
evict) [[ $# -eq 3 && $name =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ && $3 =~ ^[1-9][0-9]{0,17}$ ]] || usage ;;
disk)
    if ! [[ $name =~ ^[0-9]{1,3}$ ]] || ((10#$name < 1 || 10#$name > 100)); then
        usage
    fi
    for pair in "${@:3}"; do
        [[ $pair =~ ^[a-zA-Z0-9][a-zA-Z0-9_.-]*=[1-9][0-9]{0,17}$ ]] || usage
    done
    name=$((10#$name))
    disk_report "$name" "${@:3}"
    exit 0
    ;;
*) usage ;;
esac

config="$config_root/$name/config.yml"
data="$data_root/$name"

mkdir -p "$lock_dir"
exec 9>"$lock_dir/registry-maintenance-$name.lock"

run_gc() {
    # A repository a client fetched only manifests from (it held every layer already: the same
    # image under another name) has `_manifests` and no `_layers`; 3.1.1's `registry
    # garbage-collect` then fails its whole mark phase ("Path not found: .../_layers") and nothing
    # is ever collected (2.8 tolerates it). An empty `_layers` says what is true: no layer links.
    # Run while stopped.
    local manifests
    while IFS= read -r -d '' manifests; do
        [[ -d ${manifests%/_manifests}/_layers ]] || mkdir "${manifests%/_manifests}/_layers"
    done < <(find "$data/docker/registry/v2/repositories" -type d -name _manifests -print0 2>/dev/null)
    if [[ -n ${REGISTRY_GC_COMMAND:-} ]]; then
        local -a gc_command
        read -r -a gc_command <<<"$REGISTRY_GC_COMMAND"
        "${gc_command[@]}" garbage-collect "$config"
        return
    fi
    local image container_config
    image=$("$docker" inspect --format '{{.Config.Image}}' "$name")
    container_config=$("$docker" inspect --format "{{index .Config.Labels \"$config_path_label\"}}" "$name")
    container_config=${container_config:-$v2_config_path}
    # The serving container's own paths (2.x: /etc/docker/registry, 3.x: /etc/distribution).
    # No network: GC needs only the files, and must never reach the upstream.
    "$docker" run --rm --network none --name "$name-gc" \
        -v "$config:$container_config:ro" \
        -v "$data:/var/lib/registry" \
        "$image" garbage-collect "$container_config"
}

start_again() {
    local down
    if "$docker" start "$name" >/dev/null; then
        down=$(($(date +%s) - stopping))
        record_downtime "${downtime_kind:-gc}" "$down"
        local steps="garbage collection"
        [[ ${downtime_kind:-gc} == evict ]] && steps="eviction, garbage collection"
        log "started; down for ${down}s (drain, $steps, start)"
    else
        log "ERROR: could not start $name again"
        return 1
    fi
}

case $action in
gc)
    [[ -f $config ]] || {
        log "ERROR: no config at $config"
        exit 1
    }
    # A cache nobody pulled through yet has no repositories directory, and `registry
    # garbage-collect` fails on it ("Path not found: /docker/registry/v2/repositories"): nothing
    # to collect, so leave the registry serving.
    if [[ ! -d $data/docker/registry/v2/repositories ]]; then
        log "nothing to collect: $name has cached nothing yet"
        exit 0
    fi
    if ! flock -w "$gc_lock_wait" 9; then
        log "ERROR: lock still held after ${gc_lock_wait}s, GC not run"
        exit 1
    fi
    log "stopping for garbage collection (draining transfers in flight)"
    stopping=$(date +%s)
    # Whatever happens from here, the cache must serve again afterwards.
    trap start_again EXIT
    "$docker" stop --time "$stop_timeout" "$name" >/dev/null
    log "stopped in $(($(date +%s) - stopping))s"
    started=$(date +%s)
    if run_gc; then
        log "garbage collection done in $(($(date +%s) - started))s"
    else
        status=$?
        log "ERROR: garbage collection failed (exit $status)"
        exit "$status"
    fi
    ;;
restart)
    if ! flock -n 9; then
        log "skipped: garbage collection in progress"
        exit 0
    fi
    stopping=$(date +%s)
    "$docker" restart --time "$stop_timeout" "$name" >/dev/null
    log "restarted in $(($(date +%s) - stopping))s (drain included)"
    ;;
memory) memory_check "$((10#$3))" ;;
evict) evict_cache "$3" ;;
esac
