# shellcheck shell=bash
# shellcheck disable=SC2154 # the main script's variables (listed below)
# registry-maintenance's cache budget, memory restart and downtime record (issues 24 and 25).
# Never a file on the VM: components/renderers/shell.py puts this text in place of the
# `. "$(dirname "$0")/cache-budget.sh"` line of registry-maintenance.sh; from a checkout that line
# sources it. Uses the main script's variables: docker, name, config, data, data_root,
# stop_timeout, state_root, evict_min_age, evict_low_water, and its functions log, run_gc and
# start_again.
#
# "Last pulled" comes from the registry's own access log (`docker logs --timestamps`): every pull
# starts with a manifest request by tag or digest (`"GET|HEAD /v2/REPO/manifests/REF" 200|304`),
# and manifests are never served from anywhere else. Each hourly `evict` run folds the lines since
# its previous run into STATE_ROOT/NAME/last-pull ("EPOCH REPO"), so the record outlives docker's
# log rotation (5 x 20 MB per container, far more than an hour of a homelab's pulls) and a
# replaced container. A repository the log never showed (cached before the record began) counts
# as pulled when the cache last wrote one of its links (a fetch or a tag refresh, each caused by a
# pull): a lower bound the VM really has. File access times are not used: GC reads every link and
# manifest of every repository, and relatime moves atime on such a read once a day.
#
# Eviction unlinks whole repositories (moves their directory out of repositories/) while the
# registry is stopped, then runs the same GC as the weekly job: GC's mark keeps every blob a kept repository
# still links (a shared base layer), which the proxy's TTL expiry does not
# (docs/measurements/cache-disk.md). The stop drains like every other stop; a pull arriving then
# is refused at once and containerd takes the upstream.

repositories_dir() { echo "$data/docker/registry/v2/repositories"; }

# Bytes the cache's tree takes on disk (what the budget is compared with).
cache_bytes() {
    # A blob deleted while du walks (TTL expiry) makes du complain but still total the rest.
    du -s -B1 "$data" 2>/dev/null | cut -f1 || true
}

write_state() { # FILE: stdin -> STATE_ROOT/NAME/FILE, atomically, readable by verify's login
    local dir=$state_root/$name
    mkdir -p "$dir"
    chmod 0755 "$state_root" "$dir" 2>/dev/null || true
    cat >"$dir/.$1.tmp"
    chmod 0644 "$dir/.$1.tmp"
    mv -f "$dir/.$1.tmp" "$dir/$1"
}

# How long the cache was down for its last GC (weekly, or the one after an eviction): read by
# the `disk` report and scripts/verify.py. A file, not the journal: it needs no root to read
# (verify logs in as vm.sshUser) and no persistent journal, and it survives log rotation.
record_downtime() { # KIND SECONDS
    printf 'at=%s\nkind=%s\ndown_seconds=%s\n' "$(date +%s)" "$1" "$2" | write_state last-gc
}

# Fold the access log since the last scan into the last-pull record.
scan_pulls() {
    local dir=$state_root/$name since now record
    mkdir -p "$dir"
    record=$dir/last-pull
    now=$(date +%s)
    since=$(cat "$dir/scanned" 2>/dev/null || echo 0)
    local -a logs=(logs --timestamps)
    # A minute of overlap: a line is counted twice at worst (the maximum is kept).
    ((since > 0)) && logs+=(--since "$((since - 60))")
    { "$docker" "${logs[@]}" "$name" 2>&1 || true; } |
        TZ=UTC awk -v record="$record" '
            BEGIN {
                while ((getline line < record) > 0) {
                    split(line, f, " ")
                    if (f[2] != "") last[f[2]] = f[1]
                }
            }
            match($0, /"(GET|HEAD) \/v2\/[^ ]+\/manifests\/[^ ]+ HTTP\/[0-9.]+" (200|304) /) {
                split(substr($0, RSTART + 1, RLENGTH), request, " ")
                repo = request[2]
                sub(/\?.*$/, "", repo)
                sub(/\/manifests\/[^\/]*$/, "", repo)
                repo = substr(repo, 5)
                # docker logs --timestamps: 2025-01-02T03:04:05.123456789Z first, in UTC.
                stamp = substr($1, 1, 19)
                gsub(/[-T:]/, " ", stamp)
                t = mktime(stamp)
                if (t > 0 && t > last[repo] + 0) last[repo] = t
            }
            END { for (repo in last) print last[repo], repo }
        ' | sort -k2 | write_state last-pull
    echo "$now" | write_state scanned
}

# "EPOCH REPO" per cached repository, least recently pulled first: the record, or the newest link
# the cache wrote for it, whichever is later.
last_pulls() {
    local repos record=$state_root/$name/last-pull
    repos=$(repositories_dir)
    [[ -d $repos ]] || return 0
    find "$repos" -type f -name link -printf '%T@ %p\n' 2>/dev/null |
        awk -v record="$record" -v root="$repos/" '
            BEGIN {
                while ((getline line < record) > 0) {
                    split(line, f, " ")
                    if (f[2] != "") pulled[f[2]] = f[1]
                }
            }
            {
                path = substr($0, index($0, " ") + 1)
                if (substr(path, 1, length(root)) != root) next
                path = substr(path, length(root) + 1)
                cut = index(path, "/_manifests/")
                if (cut == 0) cut = index(path, "/_layers/")
                if (cut == 0) next
                repo = substr(path, 1, cut - 1)
                t = int($1)
                if (!(repo in last) || t > last[repo]) last[repo] = t
            }
            END {
                for (repo in last) {
                    if ((repo in pulled) && pulled[repo] + 0 > last[repo]) last[repo] = pulled[repo] + 0
                    print last[repo], repo
                }
            }
        ' | sort -n -k1,1 -k2,2
}

# The eviction plan for BUDGET bytes, on stdout:
#   size BYTES                      the cache now
#   oldest EPOCH REPO               the least recently pulled repository
#   evict EPOCH REPO FREED          in order, FREED = bytes freed by then: the repositories' own
#                                   trees and the blobs no kept repository links, as du counts them
#   protected COUNT                 over budget, but pulled within evict_min_age seconds
#   after BYTES                     the estimated size once the plan is carried out
# Nothing is evicted while the cache is within BUDGET; once over, down to evict_low_water % of it
# (so the next hours do not each stop the cache for a few megabytes).
plan_eviction() { # BUDGET
    local budget=$1 repos blobs size tmp
    repos=$(repositories_dir)
    blobs=$data/docker/registry/v2/blobs
    size=$(cache_bytes)
    echo "size ${size:-0}"
    [[ -d $repos ]] || return 0
    tmp=$(mktemp -d)
    # What du counts, per blob (its data file and its own directory) and per repository (its
    # link files and directories: a few thousand small files weigh as much as the blobs), and
    # which repository links which blob. %b: 512-byte blocks allocated.
    find "$blobs" -mindepth 3 -maxdepth 4 -printf '%d %b %p\n' 2>/dev/null |
        awk '{n = split($3, parts, "/"); print $2, ($1 == 3 ? parts[n] : parts[n - 1])}' \
            >"$tmp/sizes" || true
    find "$repos" -mindepth 1 -printf '%b %p\n' 2>/dev/null |
        awk -v root="$repos/" '{
            path = substr($0, index($0, " ") + 1 + length(root))
            cut = index(path, "/_")
            if (cut > 0) print $1, substr(path, 1, cut - 1)
        }' >"$tmp/trees" || true
    find "$repos" -type f -name link \( -path '*/_layers/sha256/*' -o \
        -path '*/_manifests/revisions/sha256/*' \) -printf '%h\n' 2>/dev/null |
        awk -v root="$repos/" '{
            path = substr($0, length(root) + 1)
            cut = index(path, "/_layers/")
            if (cut == 0) cut = index(path, "/_manifests/")
            n = split(path, parts, "/")
            print substr(path, 1, cut - 1), parts[n]
        }' | sort -u >"$tmp/links"
    last_pulls >"$tmp/last"
    awk -v sizes="$tmp/sizes" -v trees="$tmp/trees" -v links="$tmp/links" -v now="$(date +%s)" \
        -v min_age="$evict_min_age" -v size="${size:-0}" -v budget="$budget" \
        -v low_water="$evict_low_water" '
        BEGIN {
            while ((getline line < sizes) > 0) {
                split(line, f, " ")
                bytes[f[2]] += f[1] * 512
            }
            while ((getline line < trees) > 0) {
                split(line, f, " ")
                tree[f[2]] += f[1] * 512
            }
            while ((getline line < links) > 0) {
                split(line, f, " ")
                refs[f[2]]++
                linked[f[1]] = linked[f[1]] " " f[2]
            }
            target = int(budget * low_water / 100)
            over = size > budget
            freed = 0
        }
        NR == 1 { print "oldest", $1, $2 }
        {
            if (!over || size - freed <= target) next
            if (now - $1 < min_age) { protected++; next }
            freed += tree[$2]
            n = split(linked[$2], digests, " ")
            for (i = 1; i <= n; i++)
                if (--refs[digests[i]] == 0) freed += bytes[digests[i]]
            print "evict", $1, $2, freed
        }
        END {
            if (protected) print "protected", protected
            print "after", size - freed
        }
    ' "$tmp/last"
    rm -rf "$tmp"
}

# Where unlinked repositories wait, outside what Distribution reads (docker/registry/v2), until
# the registry serves again: a rename per repository while it is down, the deletion of their
# files (thousands of small ones: seconds on a busy disk) after it is up.
evicting_dir() { echo "$data/.evicting"; }

# Move the repositories' directories out of repositories/, then remove their namespaces
# (library/ of library/x) left empty.
unlink_repositories() { # REPO...
    local repos repo parent trash count=0
    repos=$(repositories_dir)
    trash=$(evicting_dir)
    mkdir -p "$trash"
    local -A parents=()
    for repo in "$@"; do
        [[ $repo != *..* && -d $repos/$repo ]] || continue
        count=$((count + 1))
        mv -- "$repos/$repo" "$trash/$count"
        parent=$repo
        while [[ $parent == */* ]]; do
            parent=${parent%/*}
            parents[$parent]=1
        done
    done
    ((${#parents[@]} > 0)) || return 0
    # Deepest first, so a namespace's own parent is empty by the time its turn comes.
    printf '%s\n' "${!parents[@]}" | awk -F/ -v root="$repos/" '{print NF, root $0}' |
        sort -rn | cut -d' ' -f2- | xargs -d '\n' rmdir --ignore-fail-on-non-empty -- 2>/dev/null ||
        true
}

# `evict NAME BUDGET`: hourly. Refresh the last-pull record; over BUDGET, stop the registry
# (drained), unlink the least recently pulled repositories (never one pulled within
# evict_min_age), GC without --delete-untagged, start again.
evict_cache() { # BUDGET
    local budget=$1 size plan count removed
    if ! flock -n 9; then
        log "skipped: another maintenance job of $name is running"
        return 0
    fi
    echo "$budget" | write_state budget
    # Left by a run that died after unlinking: nothing reads it.
    rm -rf -- "$(evicting_dir)"
    scan_pulls
    plan=$(plan_eviction "$budget")
    size=$(awk '$1 == "size" {print $2}' <<<"$plan")
    if ((size <= budget)); then
        log "within budget: $size of $budget bytes, nothing to evict"
        return 0
    fi
    count=$(grep -c '^evict ' <<<"$plan" || true)
    if ((count == 0)); then
        log "WARNING: over budget ($size of $budget bytes) but every repository was pulled in" \
            "the last ${evict_min_age}s: nothing evicted (raise the budget, or grow the disk:" \
            "vm.diskGb, or an existing host's own)"
        return 0
    fi
    if [[ ! -f $config ]]; then
        log "ERROR: no config at $config: over budget ($size of $budget bytes), nothing evicted"
        return 1
    fi
    log "over budget: $size of $budget bytes; stopping to evict $count repositories" \
        "(draining transfers in flight)"
    stopping=$(date +%s)
    # shellcheck disable=SC2034 # read by start_again
    downtime_kind=evict
    trap start_again EXIT
    "$docker" stop --time "$stop_timeout" "$name" >/dev/null
    log "stopped in $(($(date +%s) - stopping))s"
    # Pulls answered before the stop count too: plan again from the complete log.
    scan_pulls
    plan=$(plan_eviction "$budget")
    local -a removed=()
    local verb repo unlinking
    while read -r verb _ repo _; do
        if [[ $verb == evict ]]; then removed+=("$repo"); fi
    done <<<"$plan"
    unlinking=$(date +%s)
    unlink_repositories "${removed[@]}"
    # Evicted repositories leave the record; a later pull of one starts a new entry.
    if ((${#removed[@]} > 0)); then
        printf '%s\n' "${removed[@]}" |
            awk 'NR == FNR {gone[$0] = 1; next} !($2 in gone)' - "$state_root/$name/last-pull" |
            write_state last-pull
    fi
    # The whole list in the state directory; the log line names the first 20.
    printf '%s\n' "${removed[@]}" | write_state last-evicted
    local shown="${removed[*]:0:20}"
    ((${#removed[@]} > 20)) && shown+=" and $((${#removed[@]} - 20)) more"
    log "unlinked ${#removed[@]} repositories in $(($(date +%s) - unlinking))s: ${shown:-none}" \
        "(all: $state_root/$name/last-evicted)"
    started=$(date +%s)
    if run_gc; then
        local size_after
        size_after=$(($(cache_bytes) - $(du -s -B1 "$(evicting_dir)" | cut -f1)))
        log "garbage collection done in $(($(date +%s) - started))s;" \
            "cache $size_after bytes (budget $budget)"
    else
        local status=$?
        log "ERROR: garbage collection after eviction failed (exit $status)"
        exit "$status"
    fi
    trap - EXIT
    start_again
    rm -rf -- "$(evicting_dir)"
}

# `memory NAME PERCENT`: hourly. Restart (drained) only when the container uses PERCENT % of its
# memory limit or more, as `docker stats` counts it (the cgroup's usage less its inactive page
# cache, which the kernel reclaims before the limit). Neither major's memory grows per request
# with the blob descriptor cache off (docs/measurements/drain-and-memory.md): the restart is for
# what does grow (cached entries, ~0.6 KB each), before the limit's OOM kill (a SIGKILL: no drain).
memory_check() { # PERCENT
    local percent=$1 stats used usage over
    if ! flock -n 9; then
        log "skipped: garbage collection in progress"
        return 0
    fi
    if ! stats=$("$docker" stats --no-stream --format '{{.MemPerc}} {{.MemUsage}}' "$name"); then
        log "ERROR: docker stats $name failed"
        return 1
    fi
    used=${stats%% *}
    usage=${stats#* }
    used=${used%\%}
    over=$(awk -v used="$used" -v limit="$percent" 'BEGIN {print (used + 0 >= limit + 0) ? 1 : 0}')
    if ((over == 0)); then
        log "memory ${used}% of the limit ($usage), below ${percent}%: not restarted"
        return 0
    fi
    stopping=$(date +%s)
    "$docker" restart --time "$stop_timeout" "$name" >/dev/null
    log "memory ${used}% of the limit ($usage) reached ${percent}%:" \
        "restarted in $(($(date +%s) - stopping))s (drain included)"
}

# Per cache, for the `disk` report: budget, last GC downtime, oldest pull, the next eviction.
budget_report() { # NAME [BUDGET]
    local cache=$1 budget=${2:-} dir=$state_root/$1 plan
    [[ -n $budget ]] || budget=$(cat "$dir/budget" 2>/dev/null || true)
    if [[ -f $dir/last-gc ]]; then
        echo "last_gc=$cache $(awk -F= '{v[$1] = $2} END {print v["at"], v["kind"], v["down_seconds"]}' "$dir/last-gc")"
    fi
    [[ $budget =~ ^[0-9]+$ ]] || return 0
    echo "budget=$cache $budget"
    plan=$(name=$cache data=$data_root/$cache plan_eviction "$budget")
    awk -v cache="$cache" '
        $1 == "oldest" { print "oldest_pull=" cache, $2, $3 }
        # The first five by name (a big eviction would make a line no one reads), then a count.
        $1 == "evict" {
            count++
            freed = $4
            if (count <= 5) names = names (names == "" ? "" : ",") $3
        }
        $1 == "protected" { protected = $2 }
        END {
            print "next_eviction=" cache, count + 0, freed + 0, protected + 0, (names == "" ? "-" : names)
        }
    ' <<<"$plan"
}
