#!/usr/bin/env bash
# The caches' TLS on the registry VM: a CA of its own and the front's server certificate.
#
#   registry-tls trust   (a step of `pulumi up`, before the front and the nodes) make CA
#                        GENERATION if the VM has none, a first certificate if there is none, and
#                        print the CA certificates the nodes must trust (PEM, on stdout: public).
#   registry-tls issue   (the step after every node step) make sure the served certificate comes
#                        from CA GENERATION, names exactly SANS and is not due for renewal;
#                        otherwise issue a new one and switch the front to it. Then retire the
#                        keys of older CAs. Records what cron's renewal needs.
#   registry-tls renew   (the VM's cron, hourly) re-issue from the same CA, with the same names,
#                        once fewer than RENEW_BEFORE_DAYS are left. No `pulumi up` needed.
#
# Where the CA's key lives and why (README: TLS): generated here, 0600 root, never printed,
# never copied: nothing outside the VM can issue a certificate the nodes accept, and the VM can
# renew its own certificate forever without anyone's help. A recreated VM makes a new CA, which
# the same `pulumi up` pushes to the nodes.
#
# Switching certificates never cuts a connection: the new PEM gets a NEW file name (ATS caches a
# certificate by its path: a reload with the same path kept serving the old one, measured),
# ssl_multicert.config is rewritten to name it, `traffic_ctl config reload`, then this script
# waits until a new handshake on TLS_PORT shows the new serial.
#
# Parameters (trust, issue; renew reads them from STATE):
#   GENERATION          the CA that issues (1, 2, ...)
#   TRUST_PREVIOUS      1: nodes also trust CA GENERATION-1 (the overlap of a CA rotation)
#   SANS                subjectAltName entries, space separated: "IP:10.0.20.10 DNS:reg.lab"
#   CA_DAYS CERT_DAYS RENEW_BEFORE_DAYS
#   TLS_PORT            an HTTPS port of the front, to check the served certificate
#   TLS_HOST            where to reach it, default 127.0.0.1 (the front listens on every address)
#   TLS_DIR             default /etc/registry-mirrors/tls
#   CONFIG_DIR          ATS's config directory, default /etc/trafficserver
#   ATS_USER            default trafficserver (reads the PEM)
#   RELOAD              default "traffic_ctl config reload"
# Output of issue/renew: key=value lines: issued=0|1, serial=, not_after=, issuer_generation=.
set -euo pipefail

# The action: the first argument (cron), or ACTION (a `pulumi up` step: parameters only).
action=${1:-${ACTION:-}}
: "${TLS_DIR:=/etc/registry-mirrors/tls}" "${CONFIG_DIR:=/etc/trafficserver}"
: "${ATS_USER:=trafficserver}" "${RELOAD:=traffic_ctl config reload}" "${TLS_HOST:=127.0.0.1}"
state=$TLS_DIR/state.env
GENERATION=${GENERATION:-}

log() { echo "registry-tls[$action]: $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
[[ $(id -u) -eq 0 ]] || die "must run as root"
command -v openssl >/dev/null || die "openssl is not installed"

ca_dir() { echo "$TLS_DIR/ca/$1"; }

make_ca() {
    local generation=$1 dir
    dir=$(ca_dir "$generation")
    [[ -f $dir/ca.crt ]] && return 0
    [[ -f $dir/ca.retired ]] && die "CA $generation was retired; choose a new caGeneration"
    install -d -m 0700 "$dir"
    (
        umask 077
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca.key.tmp" 2>/dev/null
        openssl req -x509 -new -key "$dir/ca.key.tmp" -sha256 -days "$CA_DAYS" \
            -subj "/CN=registry-mirrors CA $generation ($(hostname))" \
            -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$dir/ca.crt.tmp"
        mv -f "$dir/ca.key.tmp" "$dir/ca.key"
    )
    chmod 0644 "$dir/ca.crt.tmp"
    mv -f "$dir/ca.crt.tmp" "$dir/ca.crt"
    log "made CA $generation"
}

current_pem() {
    # What ssl_multicert.config names (written only by this script while TLS is on).
    [[ -f $CONFIG_DIR/ssl_multicert.config ]] || return 0
    sed -n 's/^dest_ip=\* ssl_cert_name=\(.*\)$/\1/p' "$CONFIG_DIR/ssl_multicert.config" | head -n 1
}

issuer_generation() {
    # The CA generation whose certificate verifies the served one ("" when none does).
    local pem=$1 dir
    [[ -n $pem && -f $pem ]] || return 0
    for dir in "$TLS_DIR"/ca/*/; do
        [[ -f $dir/ca.crt ]] || continue
        if openssl verify -CAfile "$dir/ca.crt" -partial_chain <(openssl x509 -in "$pem") >/dev/null 2>&1; then
            basename "$dir"
            return 0
        fi
    done
}

sans_of() {
    # The certificate's subjectAltName as "IP:a DNS:b", in the order given when it was issued.
    openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null |
        tail -n +2 | tr ',' '\n' | sed 's/^ *//; s/IP Address:/IP:/' | paste -sd ' ' -
}

serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }

served_serial() {
    openssl s_client -connect "$TLS_HOST:$TLS_PORT" -servername registry </dev/null 2>/dev/null |
        openssl x509 -noout -serial 2>/dev/null | cut -d= -f2
}

listening() { [[ -n ${TLS_PORT:-} ]] && ss -Hltn "sport = :$TLS_PORT" | grep -q .; }

issue_from() {
    # issue_from GENERATION: a new key and certificate for SANS, switched to live.
    local generation=$1 dir stamp pem ext serial
    dir=$(ca_dir "$generation")
    [[ -f $dir/ca.key ]] || die "CA $generation has no key on this VM"
    install -d -m 0750 -o root -g "$ATS_USER" "$TLS_DIR"
    stamp=$(date -u +%Y%m%dT%H%M%SZ)-$$
    pem=$TLS_DIR/front-$stamp.pem
    ext=$(mktemp)
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=serverAuth"
        echo "subjectAltName=${SANS// /,}"
    } >"$ext"
    (
        umask 077
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pem.key" 2>/dev/null
        openssl req -new -key "$pem.key" -subj "/CN=${SANS%% *}" -out "$pem.csr"
        openssl x509 -req -in "$pem.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -sha256 \
            -set_serial "0x$(openssl rand -hex 16)" -days "$CERT_DAYS" -extfile "$ext" \
            -out "$pem.crt" 2>/dev/null
        # Certificate, its CA, then the key: what ssl_multicert.config's ssl_cert_name reads.
        cat "$pem.crt" "$dir/ca.crt" "$pem.key" >"$pem.tmp"
    )
    rm -f "$ext" "$pem.key" "$pem.csr" "$pem.crt"
    chown "root:$ATS_USER" "$pem.tmp"
    chmod 0640 "$pem.tmp"
    mv -f "$pem.tmp" "$pem"
    serial=$(serial_of "$pem")
    local multicert
    multicert=$(mktemp "$CONFIG_DIR/.ssl_multicert.XXXXXX")
    echo "dest_ip=* ssl_cert_name=$pem" >"$multicert"
    chmod 0644 "$multicert"
    mv -f "$multicert" "$CONFIG_DIR/ssl_multicert.config"
    if listening; then
        $RELOAD >/dev/null
        local deadline=$((SECONDS + 30))
        until [[ $(served_serial) == "$serial" ]]; do
            ((SECONDS < deadline)) || die "the front still serves the old certificate 30s after the reload"
            sleep 0.3
        done
    fi
    # Keep the served PEM and the one before it; older ones go.
    local old
    while IFS= read -r old; do
        [[ $old == "$pem" ]] || rm -f "$old"
    done < <(find "$TLS_DIR" -maxdepth 1 -name 'front-*.pem' -printf '%T@ %p\n' |
        sort -rn | tail -n +3 | cut -d' ' -f2-)
    log "issued $serial from CA $generation for $SANS, valid $CERT_DAYS days"
    echo "issued=1"
}

write_state() {
    local tmp
    tmp=$(mktemp "$TLS_DIR/.state.XXXXXX")
    {
        printf 'GENERATION=%q\n' "$GENERATION"
        printf 'SANS=%q\n' "$SANS"
        printf 'CERT_DAYS=%q\n' "$CERT_DAYS"
        printf 'RENEW_BEFORE_DAYS=%q\n' "$RENEW_BEFORE_DAYS"
        printf 'TLS_PORT=%q\n' "${TLS_PORT:-}"
        printf 'TLS_HOST=%q\n' "$TLS_HOST"
        printf 'CONFIG_DIR=%q\n' "$CONFIG_DIR"
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$state"
}

report() {
    local pem
    pem=$(current_pem)
    echo "serial=$(serial_of "$pem")"
    echo "not_after=$(openssl x509 -in "$pem" -noout -enddate | cut -d= -f2)"
    echo "issuer_generation=$(issuer_generation "$pem")"
}

due() {
    # due PEM: missing, expiring within RENEW_BEFORE_DAYS, or naming other SANS.
    local pem=$1
    [[ -n $pem && -f $pem ]] || return 0
    ! openssl x509 -in "$pem" -noout -checkend $((RENEW_BEFORE_DAYS * 86400)) >/dev/null ||
        [[ $(sans_of "$pem") != "$SANS" ]]
}

case $action in
trust)
    : "${GENERATION:?}" "${TRUST_PREVIOUS:=0}" "${SANS:?}" "${CA_DAYS:?}" "${CERT_DAYS:?}"
    : "${RENEW_BEFORE_DAYS:?}"
    install -d -m 0750 -o root -g "$ATS_USER" "$TLS_DIR"
    install -d -m 0700 "$TLS_DIR/ca"
    make_ca "$GENERATION"
    pem=$(current_pem)
    if [[ -z $pem || ! -f $pem ]]; then
        # A new VM (or TLS just turned on): nothing is served yet, nobody trusts anything yet.
        issue_from "$GENERATION" >/dev/null
        write_state
        pem=$(current_pem)
    fi
    trusted=("$GENERATION")
    if [[ $TRUST_PREVIOUS == 1 && -f $(ca_dir $((GENERATION - 1)))/ca.crt ]]; then
        trusted=($((GENERATION - 1)) "$GENERATION")
    fi
    serving=$(issuer_generation "$pem")
    if [[ " ${trusted[*]} " != *" $serving "* ]]; then
        die "the certificate served now comes from CA ${serving:-?}, which the nodes would stop" \
            "trusting before the new one is issued (after every node step): rotate in two steps," \
            "first caGeneration $GENERATION with trustPreviousCa true (README: Rotate the CA)"
    fi
    for generation in "${trusted[@]}"; do
        cat "$(ca_dir "$generation")/ca.crt"
    done
    ;;
issue)
    : "${GENERATION:?}" "${SANS:?}" "${CERT_DAYS:?}" "${RENEW_BEFORE_DAYS:?}"
    make_ca "$GENERATION"
    pem=$(current_pem)
    if due "$pem" || [[ $(issuer_generation "$pem") != "$GENERATION" ]]; then
        issue_from "$GENERATION"
    else
        echo "issued=0"
    fi
    write_state
    # Older CAs' keys are never needed again: nothing they signed is served any more.
    for dir in "$TLS_DIR"/ca/*/; do
        generation=$(basename "$dir")
        if [[ $generation != "$GENERATION" && -f $dir/ca.key ]]; then
            shred -u "$dir/ca.key" 2>/dev/null || rm -f "$dir/ca.key"
            touch "$dir/ca.retired"
            log "retired the key of CA $generation"
        fi
    done
    report
    ;;
renew)
    [[ -f $state ]] || {
        log "TLS is not set up on this VM (no $state): nothing to renew"
        exit 0
    }
    # shellcheck disable=SC1090
    . "$state"
    pem=$(current_pem)
    if due "$pem"; then
        # The CA the last `issue` step switched to: the nodes trust it.
        issue_from "$GENERATION"
    else
        echo "issued=0"
        log "certificate valid for more than $RENEW_BEFORE_DAYS days: nothing to do"
    fi
    report
    ;;
*)
    echo "usage: registry-tls trust|issue|renew" >&2
    exit 2
    ;;
esac
