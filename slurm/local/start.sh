#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost (munge, MariaDB, slurmdbd, slurmctld, slurmd)
# for integration tests. Idempotent: when the cluster already answers, it does nothing.
# Everything (configs, state, logs, the database) lives in one folder, $LABELMAKER_SLURM_DIR
# (default /tmp/labelmaker-slurm). Needs root. Prints the `export SLURM_CONF=...` line to use.
#
#   bash slurm/local/start.sh            # install packages if missing, start, wait until ready
#   eval "$(bash slurm/local/start.sh --quiet)"   # the same, and set SLURM_CONF in this shell
#
# Environment: LABELMAKER_SLURM_CPUS (default: max(4, nproc); more than the machine has is
# allowed, the node is declared with config_overrides), LABELMAKER_SLURM_MEM_MB (default 90% of
# RAM), LABELMAKER_SLURM_PORT (6817; +1, +2 used too), LABELMAKER_SLURM_DB_PORT (13306).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${LABELMAKER_SLURM_DIR:-/tmp/labelmaker-slurm}"
CONF="$STATE/etc/slurm.conf"
QUIET=0
[[ "${1:-}" == "--quiet" ]] && QUIET=1

# Ports: slurmctld, slurmd = +1, slurmdbd = +2; MariaDB. Another instance (own state folder) needs
# other ones.
CTLD_PORT="${LABELMAKER_SLURM_PORT:-6817}"
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT="${LABELMAKER_SLURM_DB_PORT:-13306}"
DB_SOCK="$STATE/mysql/mysqld.sock"

log() { if [[ $QUIET == 1 ]]; then echo "# $*" >&2; else echo "$*" >&2; fi; }
die() { echo "start.sh: $*" >&2; exit 1; }

# wait_for <seconds> <description> <command...>: retry the command every 0.5 s.
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || die "timed out after ${secs}s waiting for $what (logs: $STATE/log/)"
        sleep 0.5
    done
}

pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

export SLURM_CONF="$CONF"

node_ready() {
    local st
    st="$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -1)" || return 1
    [[ "$st" =~ ^(idle|mixed|allocated|completing)$ ]]
}
accounting_ready() { sacct -n -X -S now-1minutes -o JobID >/dev/null 2>&1; }
healthy() {
    [[ -f "$CONF" ]] && pid_alive "$STATE/run/slurmctld.pid" && pid_alive "$STATE/run/slurmd.pid" \
        && pid_alive "$STATE/run/slurmdbd.pid" && node_ready && accounting_ready
}

print_export() {
    echo "export SLURM_CONF=$CONF"
    log "cluster ready: partitions $(sinfo -h -o %P | tr '\n' ' ')(logs and state in $STATE)"
}

# --- configs ----------------------------------------------------------------------------
mkdir -p "$STATE"/{etc,ctld,slurmd,run,log}
chmod 755 "$STATE"
CPUS="${LABELMAKER_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}"
MEM_MB="${LABELMAKER_SLURM_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)}"
GPUS=2  # placeholder devices in gres.conf.in
[[ -s "$STATE/etc/db_pass" ]] || { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE/etc/db_pass"; }
chmod 600 "$STATE/etc/db_pass"
DB_PASS="$(cat "$STATE/etc/db_pass")"

CHANGED=0
render() {  # render <template> <output>; sets CHANGED=1 when the output differs
    sed -e "s|@STATE@|$STATE|g" -e "s|@CTLD_HOST@|$(hostname -s)|g" -e "s|@CPUS@|$CPUS|g" \
        -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@GPUS@|$GPUS|g" -e "s|@DB_PASS@|$DB_PASS|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" "$1" > "$2.tmp"
    if cmp -s "$2.tmp" "$2"; then rm -f "$2.tmp"; else mv "$2.tmp" "$2"; CHANGED=1; fi
}
render "$HERE/slurm.conf.in" "$CONF"
render "$HERE/gres.conf.in" "$STATE/etc/gres.conf"
render "$HERE/slurmdbd.conf.in" "$STATE/etc/slurmdbd.conf"
chmod 600 "$STATE/etc/slurmdbd.conf"

if healthy; then
    if (( CHANGED )); then
        log "config changed: scontrol reconfigure"
        scontrol reconfigure >/dev/null
        wait_for 30 "node localhost idle" node_ready
    fi
    log "local SLURM cluster already running"
    print_export
    exit 0
fi

[[ $EUID -eq 0 ]] || die "must run as root (it starts system daemons)"

# --- packages ---------------------------------------------------------------------------
need=()
for pair in slurmctld:slurmctld slurmd:slurmd sinfo:slurm-client munged:munge \
            slurmdbd:slurmdbd mariadbd:mariadb-server; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${pair%%:*}" ]] || need+=("${pair#*:}")
done
if (( ${#need[@]} )); then
    log "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # A policy-rc.d keeps the packages' own service starts out of the way: we start the daemons.
    made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
        slurmdbd mariadb-server >&2 || { (( made_policy )) && rm -f /usr/sbin/policy-rc.d; die "apt-get failed"; }
    (( made_policy )) && rm -f /usr/sbin/policy-rc.d
fi

# --- munge ------------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 20 munge sh -c 'munge -n | unmunge'
    cp /run/munge/munged.pid "$STATE/run/munged.pid"  # stop.sh stops munged only if we started it
fi

# --- MariaDB (private instance: own data dir, socket and port in $STATE) -------------------
if ! mariadb-admin --socket="$DB_SOCK" ping >/dev/null 2>&1; then
    runuser -u mysql -- test -x "$STATE" \
        || die "MariaDB runs as user mysql, which cannot enter $STATE: choose a LABELMAKER_SLURM_DIR whose parent folders are world-executable"
    if [[ ! -d "$STATE/mysql/mysql" ]]; then
        log "initialising MariaDB in $STATE/mysql"
        mkdir -p "$STATE/mysql"
        chown mysql:mysql "$STATE/mysql"
        mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=socket \
            --skip-test-db > "$STATE/log/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
    fi
    log "starting MariaDB on 127.0.0.1:$DB_PORT"
    touch "$STATE/log/mariadb.log" && chown mysql:mysql "$STATE/log/mariadb.log"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$STATE/mysql/mariadbd.pid" --log-error="$STATE/log/mariadb.log" \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        </dev/null >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb-admin --socket="$DB_SOCK" ping
fi
mariadb --socket="$DB_SOCK" -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;" || die "could not create the slurm database user"

# --- slurmdbd ---------------------------------------------------------------------------
if ! pid_alive "$STATE/run/slurmdbd.pid"; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd </dev/null >/dev/null 2>&1
fi
wait_for 60 slurmdbd sacctmgr -n show cluster
if ! sacctmgr -n -P show cluster format=Cluster | grep -qx labelmaker; then
    sacctmgr -i add cluster labelmaker >/dev/null
fi

# --- slurmctld and slurmd ---------------------------------------------------------------
if ! pid_alive "$STATE/run/slurmctld.pid"; then
    log "starting slurmctld"
    /usr/sbin/slurmctld -f "$CONF" </dev/null >/dev/null 2>&1
fi
wait_for 60 slurmctld scontrol ping
if ! pid_alive "$STATE/run/slurmd.pid"; then
    log "starting slurmd"
    /usr/sbin/slurmd -f "$CONF" -N localhost </dev/null >/dev/null 2>&1
fi
# A node left DOWN/DRAIN by an earlier unclean stop comes back here.
for _ in $(seq 1 20); do
    node_ready && break
    st="$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -1)"
    if [[ "$st" =~ (down|drain|fail) ]]; then
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    fi
    sleep 1
done
wait_for 60 "node localhost idle" node_ready
wait_for 60 "sacct" accounting_ready
print_export
