#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the launcher's tests (tests/test_slurm.py) and for
# anyone who wants to try `reproduce.py --launcher slurm` without a cluster. Debian or Ubuntu,
# as root: it installs slurm-wlm with apt-get when its programs are missing.
#
#   out=$(tests/slurm/up.sh) && eval "$out"     # exports SLURM_CONF
#   sbatch --wrap hostname; squeue; sinfo
#   tests/slurm/down.sh                          # stops it and removes its folder
#
# Its one line on stdout is `export SLURM_CONF=FOLDER/slurm.conf`; progress goes to stderr, and
# a failure ends with one line "up.sh: ERROR: ..." (after the ends of the daemons' logs) and exit
# status 1. (Do not write `eval "$(up.sh)"` under `set -e`: a failed up.sh would go unnoticed.)
#
# Everything it writes is in FOLDER = ${SLURM_TMP:-/tmp/slurm-ci}: the configuration, munge's key,
# socket and log, Slurm's state, spool, logs and pid files. It leaves /etc/slurm and /etc/munge
# alone; the one change outside FOLDER is a "127.0.0.1 HOST" line in /etc/hosts when the host's
# name does not resolve. There is no accounting daemon (so no sacct: the launcher asks squeue),
# no cgroups (proctrack/linuxproc, task/none). Run twice, it does nothing the second time if the
# cluster answers; otherwise it stops what an earlier start left in FOLDER and starts afresh.
#
# Settings (environment variables, all optional):
#   SLURM_TMP             FOLDER                                           (/tmp/slurm-ci)
#   SLURM_CI_CLUSTER      ClusterName                                      (ci)
#   SLURM_CI_CTLD_PORT    SlurmctldPort                                    (6817)
#   SLURM_CI_SLURMD_PORT  SlurmdPort                                       (6818)
#   SLURM_CI_MIN_JOB_AGE  MinJobAge: seconds squeue still shows an ended job (300)
#   SLURM_CI_CRED_EXPIRE  cred_expire: also how long a requeued job waits before it starts
#                         again, plus one second (Slurm's default 120, its least 5)   (10)
#   SLURM_CI_KILL_WAIT    KillWait: seconds from SIGTERM to SIGKILL when a job is cancelled or
#                         requeued                                         (5)
#   SLURM_CI_TIMEOUT      seconds to wait for the node to be idle          (60)
#   SLURM_CI_NO_INSTALL=1 never call apt-get (fail when a program is missing)
#   SLURM_CI_NO_HOSTS=1   never touch /etc/hosts
set -eu

T=${SLURM_TMP:-/tmp/slurm-ci}
CLUSTER=${SLURM_CI_CLUSTER:-ci}
CTLD_PORT=${SLURM_CI_CTLD_PORT:-6817}
SLURMD_PORT=${SLURM_CI_SLURMD_PORT:-6818}
MIN_JOB_AGE=${SLURM_CI_MIN_JOB_AGE:-300}
CRED_EXPIRE=${SLURM_CI_CRED_EXPIRE:-10}
KILL_WAIT=${SLURM_CI_KILL_WAIT:-5}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}

CONF=$T/slurm.conf
MUNGE_DIR=$T/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
PID_DIR=$T/run
LOG_DIR=$T/log

log() { echo "up.sh: $*" >&2; }
die() {
    if [ "${1:-}" = "--logs" ]; then
        shift
        for f in "$MUNGE_DIR/munged.log" "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
            [ -s "$f" ] || continue
            echo "----- tail $f -----" >&2
            tail -n 15 "$f" >&2 || true
        done
    fi
    # Stop what this call started (no half cluster is left); the logs stay in $T to be read.
    [ "${STARTED:-0}" = 0 ] || stop_previous >/dev/null 2>&1 || true
    echo "up.sh: ERROR: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root"
case "$T" in
    /*) ;;
    *) die "SLURM_TMP must be an absolute path (got '$T')" ;;
esac
[ "$T" != / ] || die "SLURM_TMP must not be /"

export SLURM_CONF=$CONF
start_ts=$(date +%s)

# ---------------------------------------------------------------- install
need_install=0
for b in slurmctld slurmd sbatch squeue sinfo scontrol munged; do
    command -v "$b" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
    [ "${SLURM_CI_NO_INSTALL:-0}" != 1 ] || die "Slurm/munge binaries missing and SLURM_CI_NO_INSTALL=1"
    log "installing slurm-wlm (slurmctld, slurmd, slurm-client, munge) with apt-get ..."
    # The packages' postinst would start munge and Slurm with the distribution's configuration:
    # a policy-rc.d that says no keeps them stopped (removed again if it was made here).
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold slurm-wlm
    } >"${TMPDIR:-/tmp}/slurm-ci-apt.log" 2>&1 || rc=$?
    [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { tail -n 20 "${TMPDIR:-/tmp}/slurm-ci-apt.log" >&2; die "apt-get install slurm-wlm failed (rc=$rc)"; }
    for b in slurmctld slurmd sbatch squeue sinfo scontrol munged; do
        command -v "$b" >/dev/null 2>&1 || die "'$b' still missing after installing slurm-wlm"
    done
fi

# ---------------------------------------------------------------- helpers
alive() { # pid: running and not a zombie
    kill -0 "$1" 2>/dev/null || return 1
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
pid_alive() { # pidfile
    [ -s "$1" ] || return 1
    p=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$p" ] && alive "$p"
}
term_wait_kill() { # pids...
    [ $# -gt 0 ] || return 0
    kill "$@" 2>/dev/null || true
    i=0
    while [ $i -lt 50 ]; do
        any=0
        for p in "$@"; do alive "$p" && any=1; done
        [ $any = 1 ] || return 0
        sleep 0.2
        i=$((i + 1))
    done
    kill -9 "$@" 2>/dev/null || true
}
holds_file_under_T() { # /proc/PID: has it a file under $T open?
    for fd in "$1"/fd/*; do
        case "$(readlink "$fd" 2>/dev/null)" in "$T"/*) return 0 ;; esac
    done
    return 1
}
# Stop what an earlier start left in $T: the daemons of its pid files, then job steps whose
# daemons died (a slurmstepd holds $T/log/slurmd.log open; it ignores SIGTERM, so its job's
# processes get TERM and it gets KILL).
stop_previous() {
    pids=""
    for f in "$PID_DIR/slurmd.pid" "$PID_DIR/slurmctld.pid" "$MUNGE_DIR/munged.pid"; do
        if pid_alive "$f"; then pids="$pids $(cat "$f")"; fi
    done
    if [ -n "$pids" ]; then
        log "stopping previous daemons under $T:$pids"
        # shellcheck disable=SC2086
        term_wait_kill $pids
    fi
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || continue
        holds_file_under_T "$d" || continue
        sp=${d#/proc/}
        log "killing orphaned slurmstepd $sp and its job processes"
        sid=$(ps -o sid= -p "$sp" 2>/dev/null | tr -d ' ')
        # shellcheck disable=SC2046
        [ -z "$sid" ] || term_wait_kill $(ps -eo pid=,sid= | awk -v s="$sid" -v me="$sp" '$2 == s && $1 != me {print $1}')
        kill -9 "$sp" 2>/dev/null || true
    done
}
node_state() {
    sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1
}

NODE=$(hostname -s)
[ -n "$NODE" ] || die "hostname -s printed nothing"

# ---------------------------------------------------------------- already up?
if pid_alive "$MUNGE_DIR/munged.pid" && pid_alive "$PID_DIR/slurmctld.pid" &&
    pid_alive "$PID_DIR/slurmd.pid" && [ -f "$CONF" ]; then
    st=$(node_state || true)
    case "$st" in
        idle | mixed | allocated | completing)
            log "already running under $T (node $NODE is $st)"
            echo "export SLURM_CONF=$CONF"
            exit 0
            ;;
    esac
    log "daemons under $T alive but node state is '${st:-?}': restarting"
fi

# ---------------------------------------------------------------- clean (re)start
stop_previous
rm -rf "$T"
# Another Slurm on these ports (another SLURM_TMP, the distribution's) would make a daemon exit,
# and this cluster's commands would talk to the other one: refuse, naming the knobs.
port_listening() { # port: is some socket LISTENing on it (IPv4 or IPv6)?
    hex=$(printf '%04X' "$1")
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v h="$hex" '
        { n = split($2, a, ":"); if (a[n] == h && $4 == "0A") found = 1 } END { exit !found }'
}
for port in "$CTLD_PORT" "$SLURMD_PORT"; do
    ! port_listening "$port" ||
        die "TCP port $port is already in use (another slurmctld/slurmd?); stop it or set SLURM_CI_CTLD_PORT / SLURM_CI_SLURMD_PORT"
done
mkdir -p "$T" "$MUNGE_DIR" "$PID_DIR" "$LOG_DIR" "$T/state" "$T/spool/slurmd"
chmod 755 "$T" "$PID_DIR" "$LOG_DIR" "$T/spool" "$T/spool/slurmd"
chmod 700 "$T/state"
chmod 711 "$MUNGE_DIR" # munged refuses a socket folder others may write in; clients need x

# Slurm itself is given 127.0.0.1 below, but its commands still look the host's name up now and
# then (only log noise when it fails); a line in /etc/hosts keeps the logs clean.
if [ "${SLURM_CI_NO_HOSTS:-0}" != 1 ] && ! getent hosts "$NODE" >/dev/null 2>&1; then
    log "adding '127.0.0.1 $NODE' to /etc/hosts"
    if [ -s /etc/hosts ] && [ -n "$(tail -c 1 /etc/hosts)" ]; then echo >> /etc/hosts; fi
    echo "127.0.0.1 $NODE" >> /etc/hosts
fi

# ---------------------------------------------------------------- munge
STARTED=1
if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$MUNGE_DIR/munge.key" --bits=1024 >/dev/null 2>&1 ||
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=128 count=1 status=none
else
    dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=128 count=1 status=none
fi
chmod 400 "$MUNGE_DIR/munge.key"
munged --force \
    --socket="$MUNGE_SOCK" \
    --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGE_DIR/munged.pid" \
    --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" ||
    die --logs "munged failed to start"
i=0
until [ -S "$MUNGE_SOCK" ] && munge -n -S "$MUNGE_SOCK" 2>/dev/null | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 50 ] || die --logs "munged socket $MUNGE_SOCK not answering"
    sleep 0.1
done

# ---------------------------------------------------------------- slurm.conf
# The node as slurmd finds it (slurmd -C); its memory 95 % of MemTotal, since a node that reports
# less than slurm.conf says is drained ("Low RealMemory").
hw=$(slurmd -C 2>/dev/null | head -n 1 || true)
hwval() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
CPUS=$(hwval CPUs)
[ -n "$CPUS" ] || CPUS=$(nproc)
TOPO=""
for k in Boards SocketsPerBoard CoresPerSocket ThreadsPerCore; do
    v=$(hwval $k)
    [ -z "$v" ] || TOPO="$TOPO $k=$v"
done
mem_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
mem_mb=$((mem_kb / 1024))
REALMEM=$((mem_mb - mem_mb / 20)) # 95 %
[ "$REALMEM" -ge 1 ] || REALMEM=1

printf '# empty: the packaged /etc/slurm/plugstack.conf is not read\n' > "$T/plugstack.conf"

cat > "$CONF" <<EOF
# Written by tests/slurm/up.sh: one node, no accounting, no cgroups.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE

StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool/slurmd
SlurmctldPidFile=$PID_DIR/slurmctld.pid
SlurmdPidFile=$PID_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$T/plugstack.conf
MailProg=/bin/true

# No cgroups, no accounting, no MPI.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none

SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2

# Short waits: a test should not wait minutes for Slurm.
MinJobAge=$MIN_JOB_AGE
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
BatchStartTimeout=10
KillWait=$KILL_WAIT
InactiveLimit=0
Waittime=0

NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS$TOPO RealMemory=$REALMEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$CONF"

# ---------------------------------------------------------------- daemons
# Each forks into the background and writes its pid file in $PID_DIR.
slurmctld -f "$CONF" >>"$LOG_DIR/slurmctld.stderr" 2>&1 || die --logs "slurmctld failed to start"
slurmd -f "$CONF" >>"$LOG_DIR/slurmd.stderr" 2>&1 || die --logs "slurmd failed to start"
daemons_ts=$(date +%s)

# ---------------------------------------------------------------- wait for idle
deadline=$((start_ts + TIMEOUT))
st=""
while :; do
    st=$(node_state || true)
    case "$st" in
        idle) break ;;
        down* | drain* | fail*)
            # ReturnToService=2 should bring a DOWN node back when it registers; ask anyway.
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
            ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        reason=$(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null | head -n 1 || true)
        # shellcheck disable=SC2016
        die --logs "node $NODE not idle after ${TIMEOUT}s (state='${st:-no answer from slurmctld}'${reason:+, reason='$reason'}); logs in $LOG_DIR"
    fi
    if [ $(($(date +%s) - daemons_ts)) -ge 3 ]; then # fail fast if a daemon died
        pid_alive "$PID_DIR/slurmctld.pid" || die --logs "slurmctld exited; see $LOG_DIR/slurmctld.log"
        pid_alive "$PID_DIR/slurmd.pid" || die --logs "slurmd exited; see $LOG_DIR/slurmd.log"
    fi
    sleep 0.5
done

log "cluster '$CLUSTER' up in $(($(date +%s) - start_ts))s: node $NODE ($CPUS CPUs, ${REALMEM} MB), state dir $T"
echo "export SLURM_CONF=$CONF"
