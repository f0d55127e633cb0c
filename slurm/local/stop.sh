#!/usr/bin/env bash
# Stop the local SLURM cluster that start.sh started: cancel its jobs, then stop slurmd,
# slurmctld, slurmdbd, MariaDB and munged (if start.sh started it), each by its recorded pid.
# Leaves nothing of the cluster running.
# The state folder stays (logs, accounting database) unless --purge is given.
set -uo pipefail

STATE="${LABELMAKER_SLURM_DIR:-/tmp/labelmaker-slurm}"
export SLURM_CONF="$STATE/etc/slurm.conf"
PURGE=0
[[ "${1:-}" == "--purge" ]] && PURGE=1

pid_of() { [[ -s "$1" ]] && cat "$1"; }

# stop_pid <name> <pidfile>: TERM, wait up to 20 s, then KILL.
stop_pid() {
    local name=$1 pid
    pid="$(pid_of "$2")" || return 0
    kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
    echo "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }
        sleep 0.5
    done
    echo "  $name did not stop; killing it"
    kill -KILL "$pid" 2>/dev/null
    rm -f "$2"
}

if [[ -f "$SLURM_CONF" ]] && scontrol ping >/dev/null 2>&1; then
    jobs="$(squeue -h -o %A 2>/dev/null | sort -u)"
    if [[ -n "$jobs" ]]; then
        echo "cancelling $(echo "$jobs" | wc -l) job(s)"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 1 30); do
            [[ -z "$(squeue -h -o %A 2>/dev/null)" ]] && break
            sleep 0.5
        done
    fi
fi

stop_pid slurmd "$STATE/run/slurmd.pid"
stop_pid slurmctld "$STATE/run/slurmctld.pid"
stop_pid slurmdbd "$STATE/run/slurmdbd.pid"
stop_pid MariaDB "$STATE/mysql/mariadbd.pid"
stop_pid munged "$STATE/run/munged.pid"  # only when start.sh started it (not a system service)

# Job steps whose slurmd is gone: slurmstepd processes of this cluster (found by its spool dir).
for pid in $(pgrep -x slurmstepd 2>/dev/null); do
    if grep -qs "$STATE" "/proc/$pid/cmdline" "/proc/$pid/environ" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null && echo "killed leftover slurmstepd $pid"
    fi
done

if (( PURGE )); then
    rm -rf "$STATE" && echo "removed $STATE"
fi
echo "local SLURM cluster stopped"
