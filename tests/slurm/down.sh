#!/usr/bin/env bash
# Stops the cluster of tests/slurm/up.sh and removes its folder ${SLURM_TMP:-/tmp/slurm-ci}. It
# cancels the jobs first (while slurmctld runs, so that slurmd ends their processes), then stops
# the three daemons of the folder's pid files, then any job step (slurmstepd, which ignores
# SIGTERM, and its processes) still holding a file of the folder. Nothing else is touched.
# Running it twice, or with nothing running, is fine; the exit status is 0 but for a bad
# SLURM_TMP.
set -u
T=${SLURM_TMP:-/tmp/slurm-ci}
case "$T" in /*) ;; *) echo "down.sh: ERROR: SLURM_TMP must be an absolute path" >&2; exit 1 ;; esac
[ "$T" != / ] || { echo "down.sh: ERROR: SLURM_TMP must not be /" >&2; exit 1; }

pids_of_pidfiles() {
    for f in "$T/run/slurmd.pid" "$T/run/slurmctld.pid" "$T/munge/munged.pid"; do
        [ -s "$f" ] && cat "$f" 2>/dev/null
    done
}
# slurmstepd processes whose open files point into $T (they keep SlurmdLogFile open).
stepd_pids() {
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || continue
        for fd in "$d"/fd/*; do
            case "$(readlink "$fd" 2>/dev/null)" in "$T"/*) echo "${d#/proc/}"; break ;; esac
        done
    done
}
alive() { # pid: running and not a zombie
    kill -0 "$1" 2>/dev/null || return 1
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
term_wait_kill() { # pids...
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null
    i=0
    while [ $i -lt 50 ]; do
        alive=0
        for p in "$@"; do alive "$p" && alive=1; done
        [ $alive = 1 ] || return 0
        sleep 0.2; i=$((i + 1))
    done
    kill -9 "$@" 2>/dev/null
    return 0
}

if [ -d "$T" ]; then
    # 1. Cancel all jobs while slurmctld still runs, so that slurmd cleans up job processes.
    if [ -f "$T/slurm.conf" ] && [ -s "$T/run/slurmctld.pid" ] && alive "$(cat "$T/run/slurmctld.pid")"; then
        export SLURM_CONF=$T/slurm.conf
        if [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ]; then
            timeout 10 scancel --quiet --full -u root >/dev/null 2>&1 || true
            i=0
            while [ $i -lt 20 ] && [ -n "$(timeout 5 squeue -h -o %i 2>/dev/null)" ]; do sleep 0.5; i=$((i + 1)); done
        fi
    fi
    # 2. Stop the daemons (in parallel).
    # shellcheck disable=SC2046
    term_wait_kill $(pids_of_pidfiles)
    # 3. Orphaned job steps (e.g. slurmctld had died): kill each step's whole session.
    for sp in $(stepd_pids); do
        sid=$(ps -o sid= -p "$sp" 2>/dev/null | tr -d ' ')
        # slurmstepd itself ignores SIGTERM: TERM the job processes, then KILL the stepd.
        # shellcheck disable=SC2046
        [ -n "$sid" ] && term_wait_kill $(ps -eo pid=,sid= | awk -v s="$sid" -v me="$sp" '$2 == s && $1 != me {print $1}')
        kill -9 "$sp" 2>/dev/null
    done
    rm -rf "$T"
fi
echo "down.sh: stopped, removed $T" >&2
