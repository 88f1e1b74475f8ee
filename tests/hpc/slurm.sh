#!/usr/bin/env bash
# A real single-node Slurm on loopback, from Debian's packages, for the HPC test.
#
#   tests/hpc/slurm.sh install             apt-get install munge, MariaDB, slurmdbd, slurmctld, slurmd
#   tests/hpc/slurm.sh start DIR PARTITION  write configs under DIR, start munged, mariadbd, slurmdbd,
#                                           slurmctld and slurmd, wait until the node is idle
#   tests/hpc/slurm.sh stop DIR             stop every daemon `start` started, by the pid it recorded
#
# Needs root. DIR must not exist yet and its parents must be readable by the `slurm` user
# (e.g. under /var/tmp, not /root or pytest's private tmp). Clients (sbatch, squeue, sacct,
# snakemake's Slurm plugin) need SLURM_CONF=DIR/etc/slurm.conf in their environment.
# No systemd is assumed: every daemon is started here by hand. Nothing listens on any
# address but 127.0.0.1 (CommunicationParameters=NoInAddrAny,NoCtldInAddrAny; MariaDB
# without networking, reached through its socket); munge has its own socket under DIR.
set -euo pipefail

die() { echo "slurm.sh: $*" >&2; exit 1; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep 0.5
    done
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd_install() {
    local packages=(munge mariadb-server slurmdbd slurmctld slurmd slurm-client)
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${packages[@]}"; then
        apt-get update -q && apt-get install -y -q --no-install-recommends "${packages[@]}"
    fi
}

cmd_start() {
    local dir=$1 partition=$2
    [[ $(id -u) == 0 ]] || die "needs root"
    [[ ! -e $dir ]] || die "$dir exists already"
    [[ ! -e /etc/slurm/slurm.conf ]] || die "/etc/slurm/slurm.conf exists (a Slurm is configured here already)"
    local port
    for port in 6817 6818 6819; do port_free "$port" || die "port $port is in use (a Slurm already runs here?)"; done
    local host; host=$(hostname -s)
    mkdir -p "$dir"/{etc,log,pids,munge,mysql,spool/ctld,spool/d}
    chmod 755 "$dir" "$dir"/{etc,log,pids}
    chown slurm:slurm "$dir"/{log,pids,spool/ctld}
    chown munge:munge "$dir/munge"; chmod 711 "$dir/munge"
    chown mysql:mysql "$dir/mysql"; chmod 700 "$dir/mysql"

    # munge: its own socket, the key the package generated
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged --socket="$dir/munge/munge.socket.2" --pid-file="$dir/munge/munged.pid" \
        --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    cp "$dir/munge/munged.pid" "$dir/pids/munged.pid"

    # MariaDB: no TCP at all (skip-networking); slurmdbd reaches it through the socket
    mariadb-install-db --user=mysql --datadir="$dir/mysql/data" --auth-root-authentication-method=socket \
        --skip-test-db >"$dir/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $(tail -5 "$dir/log/mariadb-install.log")"
    setsid mariadbd --user=mysql --datadir="$dir/mysql/data" --socket="$dir/mysql/mysql.sock" \
        --pid-file="$dir/mysql/mariadbd.pid" --skip-networking --log-error="$dir/log/mariadb.log" \
        </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/pids/mariadbd.pid"
    chmod 711 "$dir/mysql"
    wait_for 60 "MariaDB" mariadb --socket="$dir/mysql/mysql.sock" -e "SELECT 1"
    local dbpass; dbpass=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    mariadb --socket="$dir/mysql/mysql.sock" -e "CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$dbpass';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

    local cpus; cpus=$(nproc)
    local memory_mb; memory_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    local node; node=$(slurmd -C | head -1 | sed -E 's/ RealMemory=[0-9]+//')
    [[ $node == NodeName=* ]] || node="NodeName=$host CPUs=$cpus"

    cat >"$dir/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket.2
CommunicationParameters=NoInAddrAny
DbdAddr=127.0.0.1
DbdHost=$host
DbdPort=6819
SlurmUser=slurm
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/pids/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm "$dir/etc/slurmdbd.conf"; chmod 600 "$dir/etc/slurmdbd.conf"

    cat >"$dir/etc/slurm.conf" <<EOF
ClusterName=lungclam-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket.2
CredType=cred/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/pids/slurmctld.pid
SlurmdPidFile=$dir/pids/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# no cgroups on a container-like test machine
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
# the munge socket for connections to slurmdbd (sacct, sacctmgr, slurmctld)
AccountingStoragePass=$dir/munge/munge.socket.2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=300
InactiveLimit=0
KillWait=5
$node NodeAddr=127.0.0.1 RealMemory=$memory_mb State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$dir/etc/slurm.conf"
    export SLURM_CONF=$dir/etc/slurm.conf
    # The job step plugin strips SLURM_* (SLURM_CONF too) from the environment of the
    # `srun` it runs inside each job, so srun reads the default /etc/slurm/slurm.conf:
    # link ours there for the life of this Slurm (`stop` removes the link).
    mkdir -p /etc/slurm
    ln -s "$dir/etc/slurm.conf" /etc/slurm/slurm.conf

    # slurmdbd reads slurmdbd.conf beside SLURM_CONF; MYSQL_UNIX_PORT points its client
    # library at our MariaDB socket
    MYSQL_UNIX_PORT="$dir/mysql/mysql.sock" slurmdbd
    wait_for 60 "slurmdbd" sacctmgr -n list cluster
    sacctmgr -i add cluster lungclam-test >/dev/null
    slurmctld
    slurmd
    wait_for 90 "the node to become idle" bash -c '[[ $(sinfo -h -N -o %t) == idle* ]]'
    echo "SLURM_CONF=$SLURM_CONF"
}

cmd_stop() {
    local dir=$1 name pid
    [[ -d $dir/pids ]] || die "$dir has no pids folder"
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        [[ -s $dir/pids/$name.pid ]] || continue
        pid=$(tr -dc 0-9 <"$dir/pids/$name.pid")
        [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "slurm.sh: $name ($pid) ignored SIGTERM for 30 s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [[ -L /etc/slurm/slurm.conf && $(readlink /etc/slurm/slurm.conf) == "$dir/etc/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
}

case ${1:-} in
    install) cmd_install ;;
    start) [[ $# == 3 ]] || die "usage: $0 start DIR PARTITION"; cmd_start "$2" "$3" ;;
    stop) [[ $# == 2 ]] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
    *) die "usage: $0 install | start DIR PARTITION | stop DIR" ;;
esac
