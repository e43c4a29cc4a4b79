#!/usr/bin/env bash
# Install the front's configuration (Apache Traffic Server, Debian's trafficserver package: one
# traffic_server in front of every cache, components/renderers/front_proxy.py) and make it live
# without cutting a pull in flight whenever ATS allows it.
#
# stdin: the files, each after a header line "# registry-mirrors-front: <file name>" (names only,
# installed in CONFIG_DIR); the header is not written.
#
# What a change costs (measured, docs/design/front-proxy.md):
#   - remap rules, header_rewrite rules, the certificate: `traffic_ctl config reload`, every
#     connection kept (a transfer in flight finishes);
#   - a NEW listening port or a store change: ATS reads them only at start, so a restart of the
#     unit, drained first (`traffic_ctl server drain`, then until no transaction is in flight,
#     for up to DRAIN_SECONDS). A port that is no longer wanted is not a reason: its
#     remap rule is gone, so it answers nothing but errors until the next start, and no
#     connection is cut for it.
#   - RESTART=0 (the step after the nodes, which only changes remap rules): never a restart.
#
# Every new file set is checked by traffic_server itself (`-C verify_config`, on a copy) before
# anything is installed: a remap.config it cannot load is FATAL at the next start.
#
# Parameters (exported by components/renderers/shell.remote_command):
#   PORTS         the public ports the front must listen on afterwards (space separated)
#   STORE         the disk store file (storage.config names it); STORE_MB its size
#   RESTART       1: a restart is allowed when needed (default); 0: fail instead
#   CONFIG_DIR    default /etc/trafficserver
#   DRAIN_SECONDS default 120
#   ATS_USER      default trafficserver (owner of the store)
#   SERVICE       default trafficserver (systemd unit; Debian's ExecReload is traffic_ctl)
#   STATS_PATH    default _front_stats (the counters, on loopback)
#   PLAIN_OFF_RULES the header_rewrite rules a refusing plain port's remap rule names
#   LOCAL_ADDRESS where this script reaches the front itself, default 127.0.0.1
# Output: key=value lines: written=<file> ..., store=kept|created|resized,
#         action=none|reload|start|restart|drained-restart, changed=0|1.
set -euo pipefail

: "${PORTS:?PORTS is required}" "${STORE:?STORE is required}" "${STORE_MB:?STORE_MB is required}"
: "${RESTART:=1}" "${CONFIG_DIR:=/etc/trafficserver}" "${DRAIN_SECONDS:=120}"
: "${ATS_USER:=trafficserver}" "${SERVICE:=trafficserver}" "${STATS_PATH:=_front_stats}"
: "${PLAIN_OFF_RULES:=registry-mirrors-plain-off.config}" "${LOCAL_ADDRESS:=127.0.0.1}"

die() {
    echo "front.sh: $*" >&2
    exit 1
}
[[ $(id -u) -eq 0 ]] || die "must run as root"
if ! command -v traffic_ctl >/dev/null || ! command -v traffic_server >/dev/null; then
    die "trafficserver is not installed (the VM's vendor-data or, on an existing host, prepare-host.sh installs it: did that step finish?)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the files -------------------------------------------------------------------------------
mkdir "$work/files"
current=""
while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^#\ registry-mirrors-front:\ (.*)$ ]]; then
        current=${BASH_REMATCH[1]}
        # A name, never a path: stdin must not write outside CONFIG_DIR.
        [[ $current =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "refusing file name ${current@Q}"
        : >"$work/files/$current"
    elif [[ -n $current ]]; then
        printf '%s\n' "$line" >>"$work/files/$current"
    elif [[ -n $line ]]; then
        die "stdin does not start with a '# registry-mirrors-front: <file>' line"
    fi
done
[[ -f $work/files/records.config && -f $work/files/remap.config ]] ||
    die "stdin has no records.config and remap.config"

changed_files=()
for file in "$work"/files/*; do
    name=$(basename "$file")
    cmp -s "$file" "$CONFIG_DIR/$name" || changed_files+=("$name")
done

# --- the store --------------------------------------------------------------------------------
store_state=kept
install -d -m 0750 -o "$ATS_USER" -g "$ATS_USER" "$(dirname "$STORE")"
want_bytes=$((STORE_MB * 1024 * 1024))
if [[ ! -f $STORE ]]; then
    store_state=created
elif [[ $(stat -c %s "$STORE") -ne $want_bytes ]]; then
    store_state=resized
fi
if [[ $store_state != kept ]]; then
    # Sparse: the blocks are taken as ATS writes them (it reuses the file cyclically).
    truncate -s "$want_bytes" "$STORE"
    chown "$ATS_USER:$ATS_USER" "$STORE"
    chmod 0640 "$STORE"
    echo "store=$store_state"
fi

# --- checked by ATS before anything is installed ----------------------------------------------
if ((${#changed_files[@]} > 0)); then
    cp -a "$CONFIG_DIR" "$work/etc"
    cp "$work"/files/* "$work/etc/"
    # traffic_server drops to its user (proxy.config.admin.user_id, trafficserver on Debian)
    # before it opens its log and runtime directories: in mktemp's 0700 directory it cannot
    # ("unable to access log directory ... Permission denied", seen on the VM tier's guest).
    chmod 0711 "$work"
    install -d -m 0750 -o "$ATS_USER" -g "$ATS_USER" "$work/var"
    {
        echo "prefix: /usr"
        echo "exec_prefix: /usr"
        echo "bindir: /usr/bin"
        echo "sbindir: /usr/sbin"
        echo "sysconfdir: $work/etc"
        echo "datadir: /usr/share/trafficserver"
        echo "libdir: /usr/lib/trafficserver"
        echo "libexecdir: /usr/lib/trafficserver/modules"
        echo "localstatedir: $work/var"
        echo "runtimedir: $work/var"
        echo "logdir: $work/var"
        echo "cachedir: $work/var"
    } >"$work/runroot.yaml"
    if ! output=$(traffic_server "--run-root=$work/runroot.yaml" -C verify_config 2>&1); then
        echo "front.sh: traffic_server refuses the new configuration; nothing was installed:" >&2
        printf '%s\n' "$output" | grep -v '^NOTE: using command line path' | tail -n 20 >&2
        exit 3
    fi
fi

# --- install ------------------------------------------------------------------------------------
for name in "${changed_files[@]}"; do
    tmp=$(mktemp "$CONFIG_DIR/.registry-mirrors.XXXXXX")
    cp "$work/files/$name" "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$CONFIG_DIR/$name"
    echo "written=$name"
done

# --- live ---------------------------------------------------------------------------------------
listening() {
    ss -Hltn "sport = :$1" | grep -q .
}

metric() {
    traffic_ctl metric get "$1" 2>/dev/null | awk '{print $2}'
}

wait_for() {
    # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || die "$what after ${seconds}s (journalctl -u $SERVICE; /var/log/trafficserver/diags.log)"
        sleep 0.2
    done
}

all_listening() {
    local port
    for port in $PORTS; do
        listening "$port" || return 1
    done
}

plain_ports_as_ruled() {
    local line port status
    while read -r line; do
        [[ $line =~ ^regex_map\ http://\^\.\*\$:([0-9]+)\  ]] || continue
        port=${BASH_REMATCH[1]}
        status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$LOCAL_ADDRESS:$port/v2/") || true
        if [[ $line == *"@pparam=$PLAIN_OFF_RULES"* ]]; then
            [[ $status == 403 ]] || return 1
        else
            [[ $status != 403 ]] || return 1
        fi
    done <"$CONFIG_DIR/remap.config"
}

missing_port=0
for port in $PORTS; do
    listening "$port" || missing_port=1
done

action=none
restart_reason=""
if ! systemctl is-active --quiet "$SERVICE"; then
    action=start
elif [[ $store_state != kept || " ${changed_files[*]} " == *" storage.config "* ]]; then
    restart_reason="the store changed"
elif ((missing_port)); then
    restart_reason="a port is not listening yet"
elif ((${#changed_files[@]} > 0)); then
    action=reload
fi
if [[ -n $restart_reason ]]; then
    [[ $RESTART == 1 ]] || die "$restart_reason, and this step may not restart the front"
    action=restart
fi

case $action in
start)
    systemctl enable --quiet "$SERVICE"
    systemctl restart "$SERVICE"
    ;;
restart)
    # Drain first: in drain mode ATS closes each client connection after its response, so the
    # transfers under way finish and no new one starts on an old connection; then restart once
    # no transaction is in flight (idle kept-alive connections are cut: a client opens a new
    # one). traffic_manager holds the listening sockets, so only a restart of the whole unit
    # opens a new port (`traffic_ctl server restart` keeps the old sockets).
    traffic_ctl server drain >/dev/null 2>&1 || true
    in_flight() {
        # From traffic_server itself (stats_over_http on loopback; traffic_ctl's copy of the
        # counters lags): transactions with a client, this request not counted.
        local port=${PORTS%% *} count
        # --compressed: asked for no encoding, stats_over_http (9.2) has answered with a
        # compressed body (seen twice in the integration tests); curl then decodes any.
        count=$(curl -fsS --compressed --max-time 5 "http://$LOCAL_ADDRESS:$port/$STATS_PATH" 2>/dev/null |
            grep -o '"proxy.process.http.current_active_client_connections": *[0-9]*' |
            grep -o '[0-9]*$') || true
        echo "${count:-0}"
    }
    deadline=$((SECONDS + DRAIN_SECONDS))
    while (($(in_flight) > 0)) && ((SECONDS < deadline)); do sleep 0.2; done
    if (($(in_flight) > 0)); then
        echo "front.sh: transfers still in flight after ${DRAIN_SECONDS}s: restarting anyway ($restart_reason)" >&2
    else
        action=drained-restart
    fi
    systemctl restart "$SERVICE"
    ;;
reload)
    before=$(metric proxy.node.config.reconfigure_time || true)
    traffic_ctl config reload
    # The reload is asynchronous; a second reload right after the first can be lost.
    reloaded() { [[ $(metric proxy.node.config.reconfigure_time || true) != "$before" ]]; }
    wait_for 30 "the reload was not applied" reloaded
    # traffic_server loads the new rules after that, on a thread of its own: done when each
    # plain port answers as its rule says (403 with plain HTTP off, anything else serving).
    wait_for 30 "the new remap rules are not in effect" plain_ports_as_ruled
    ;;
esac

wait_for 120 "the front is not listening on every port ($PORTS)" all_listening
echo "action=$action"
if [[ $action == none && $store_state == kept ]]; then
    echo "changed=0"
else
    echo "changed=1"
fi
