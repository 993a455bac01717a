#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the tests and for trying the
# slurm launcher: munged, mariadbd + slurmdbd (accounting: sacct, which submitit
# reads job states from), slurmctld and slurmd. Needs root and Debian's
# slurmctld slurmd slurm-client slurmdbd munge mariadb-server.
#
#   slurm/cluster.sh start     # prints: export SLURM_CONF=...
#   slurm/cluster.sh status
#   slurm/cluster.sh stop      # by pid files; never kills by name
#
# Everything (configs, state, logs, database) lives in $HARNESS_SLURM_DIR
# (default /tmp/harness-slurm); ports 6817-6819 and 3307 on loopback.
set -euo pipefail

DIR=${HARNESS_SLURM_DIR:-/tmp/harness-slurm}
CLUSTER=harness
NODE=$(hostname -s)
DB_PORT=3307

log() { echo "slurm/cluster.sh: $*" >&2; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "timed out after ${limit}s waiting for $what (logs: $DIR/log)"
    return 1
}

stop_pid() {  # stop_pid NAME: TERM the pid in $DIR/run/NAME.pid, then wait for it
    local file=$DIR/run/$1.pid pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$file"
}

write_configs() {
    local cpus mem
    cpus=$(nproc)
    mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))
    mkdir -p "$DIR"/{run,log,state,spool,munge,mysql}
    cat >"$DIR/slurm.conf" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MaxArraySize=1001
MaxJobCount=20000
MinJobAge=600
KillWait=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=harness
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/slurmdbd.conf"
}

start() {
    if [[ -f $DIR/run/slurmctld.pid ]] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
        log "already running"
        echo "export SLURM_CONF=$DIR/slurm.conf"
        return 0
    fi
    write_configs
    export SLURM_CONF=$DIR/slurm.conf
    # munge: its own key, as the munge user (munged refuses root), on the default
    # socket /run/munge/munge.socket.2 (the clients' accounting calls ignore AuthInfo)
    if [[ ! -f $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom bs=1 count=1024 of="$DIR/munge/munge.key" status=none
    fi
    chown -R munge:munge "$DIR/munge"
    chmod 700 "$DIR/munge" && chmod 400 "$DIR/munge/munge.key"
    # run/ and log/ are shared by daemons running as root, munge and mysql (like /tmp)
    chmod 1777 "$DIR/run" "$DIR/log"
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munge.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
    wait_for 10 munged test -S /run/munge/munge.socket.2
    # mariadb for slurmdbd, on loopback
    if [[ ! -d $DIR/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir="$DIR/mysql" \
            --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1
    fi
    chown -R mysql:mysql "$DIR/mysql"
    /usr/sbin/mariadbd --user=mysql --datadir="$DIR/mysql" --bind-address=127.0.0.1 \
        --port=$DB_PORT --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadbd.pid" \
        --log-error="$DIR/log/mariadbd.log" >/dev/null 2>&1 &
    wait_for 30 mariadbd mariadb --socket="$DIR/run/mysqld.sock" -e "select 1"
    mariadb --socket="$DIR/run/mysqld.sock" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'harness';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'harness';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    SLURM_CONF=$DIR/slurm.conf /usr/sbin/slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    /usr/sbin/slurmctld
    wait_for 30 slurmctld scontrol ping
    /usr/sbin/slurmd
    wait_for 30 "node $NODE idle" bash -c "sinfo -h -N -o %t | grep -q idle"
    log "up: cluster $CLUSTER, node $NODE ($(nproc) CPUs), state in $DIR"
    echo "export SLURM_CONF=$DIR/slurm.conf"
}

stop() {
    export SLURM_CONF=$DIR/slurm.conf
    for name in slurmd slurmctld slurmdbd mariadbd munge; do
        stop_pid "$name"
    done
    log "stopped"
}

status() {
    export SLURM_CONF=$DIR/slurm.conf
    for name in munge mariadbd slurmdbd slurmctld slurmd; do
        local file=$DIR/run/$name.pid
        if [[ -f $file ]] && kill -0 "$(cat "$file")" 2>/dev/null; then
            echo "$name: running (pid $(cat "$file"))"
        else
            echo "$name: stopped"
        fi
    done
    sinfo 2>/dev/null || true
}

case ${1:-} in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
