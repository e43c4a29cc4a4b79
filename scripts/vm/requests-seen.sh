#!/usr/bin/env bash
# For scripts/verify.py's bypass check (README "Check the caches work"): which of the given digests
# each cache was asked for, read from the cache's own access log (`docker logs`). Each digest is a
# random one verify made for one node and one cache, and only that node's pull asked for it: a
# digest in the log proves that node's hosts.toml sent that pull to that cache, whatever else
# the cache served meanwhile. Read-only. Runs as vm.sshUser (in the docker group), sent on
# stdin (`bash -s`), so it never depends on what is installed on the VM.
# Args: SINCE (epoch seconds; older log lines are not read), then CONTAINER DIGEST pairs
#   (DIGEST: 64 lowercase hex digits, without `sha256:`).
# Output: seen=CONTAINER DIGEST per digest found in that container's log; error=CONTAINER MESSAGE
#   for a log that cannot be read.
# Exit: 0; 2 bad arguments.
set -euo pipefail

me=requests-seen.sh
[[ $# -ge 1 && $1 =~ ^[0-9]+$ ]] || { echo "${me}: expected SINCE (epoch seconds) first" >&2; exit 2; }
since=$1
shift
(($# % 2 == 0)) || { echo "${me}: expected CONTAINER DIGEST pairs" >&2; exit 2; }
declare -A digests=()
while (($#)); do
  if [[ ! $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ || ! $2 =~ ^[0-9a-f]{64}$ ]]; then
    echo "${me}: refusing the pair ${1@Q} ${2@Q}" >&2
    exit 2
  fi
  digests[$1]+="$2"$'\n'
  shift 2
done

for name in "${!digests[@]}"; do
  # Distribution writes its access log to stderr: docker logs replays it there.
  if ! log=$(docker logs --since "$since" "$name" 2>&1); then
    echo "error=${name} ${log##*$'\n'}"
    continue
  fi
  grep -oF -f <(printf '%s' "${digests[$name]}") <<<"$log" | sort -u | sed "s/^/seen=${name} /" || true
done
