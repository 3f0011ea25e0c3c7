#!/usr/bin/env bash
# A real one-node Slurm cluster on 127.0.0.1, for the Slurm backend's tests and for trying
# `perl run --backend slurm` without a cluster (see docs/architecture.md, "Slurm backend").
#
#   scripts/local-slurm.sh install   # apt-get the Debian packages (root; once per machine)
#   scripts/local-slurm.sh start     # munged, mariadb, slurmdbd, slurmctld, slurmd; idempotent
#   scripts/local-slurm.sh status    # exit 0 when the cluster is up (an idle, mixed or busy node)
#   scripts/local-slurm.sh env       # the line to eval: export SLURM_CONF=...
#   scripts/local-slurm.sh stop      # stops every daemon this script started; idempotent
#
# Everything lives in $PERL_SLURM_DIR (default /tmp/perl-slurm): configs, state, logs,
# pid files, four fake GPUs (character devices) that Slurm hands out as GRES gpu. Each
# start begins from a clean state (saved node state and the accounting database are
# wiped: job ids restart at 1). SLURM_CONF is exported before any Slurm command, so no
# client ever looks the cluster up in DNS. Needs root (the daemons run as root).
set -euo pipefail

DIR="${PERL_SLURM_DIR:-/tmp/perl-slurm}"
CTLD_PORT="${PERL_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${PERL_SLURM_SLURMD_PORT:-6818}"
DBD_PORT="${PERL_SLURM_DBD_PORT:-6819}"
DB_PORT="${PERL_SLURM_DB_PORT:-3307}"
START_TIMEOUT="${PERL_SLURM_START_TIMEOUT:-60}"
NODE="$(hostname -s)"
export SLURM_CONF="$DIR/etc/slurm.conf"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

say() { echo "local-slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }

pid_alive() { # pidfile
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() { # description, seconds, command...
  local what="$1" limit="$2"; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      return 1
    fi
    sleep 0.2
  done
}

daemon_failed() { # name, log file
  say "error: $1 did not come up within ${START_TIMEOUT}s. The end of its log ($2):"
  tail -n 20 "$2" >&2 2>/dev/null || true
  stop_all
  exit 1
}

install() {
  local missing=()
  for cmd in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$cmd")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    say "Slurm, munge and MariaDB are installed."
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; installing them needs root (apt-get install ${PACKAGES[*]})."
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_configs() {
  local cpus mem
  cpus="$(getconf _NPROCESSORS_ONLN)"  # not nproc: it obeys OMP_NUM_THREADS
  mem="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  mkdir -p "$DIR"/{etc,run,log,state,spool,munge,dev,mysql}
  chmod 755 "$DIR" "$DIR/munge"  # munged refuses a socket directory others cannot reach
  for i in 0 1 2 3; do
    [ -e "$DIR/dev/nvidia$i" ] || mknod "$DIR/dev/nvidia$i" c 195 "$i"
  done
  cat >"$SLURM_CONF" <<EOF
ClusterName=perl
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job may start again after 5 s (default 120 s)
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
ReturnToService=2
MinJobAge=3600
KillWait=10
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$DIR/munge/munge.socket
MpiDefault=none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$DIR/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/dev/nvidia[0-3]
EOF
  cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=perl_slurm_acct
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
}

start_munge() {
  pid_alive "$DIR/run/munged.pid" && return
  [ -s "$DIR/munge/munge.key" ] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/munge.key"
  /usr/sbin/munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || daemon_failed munged "$DIR/log/munged.log"
  wait_for munged "$START_TIMEOUT" test -S "$DIR/munge/munge.socket" || daemon_failed munged "$DIR/log/munged.log"
}

start_mariadb() {
  pid_alive "$DIR/run/mariadb.pid" && return
  if [ ! -d "$DIR/mysql/mysql" ]; then
    timeout 120 mariadb-install-db --user=root --datadir="$DIR/mysql" --auth-root-authentication-method=normal \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || daemon_failed mariadb-install-db "$DIR/log/mariadb-install.log"
  fi
  (setsid /usr/sbin/mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/run/mysql.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadb.pid" --skip-name-resolve \
    --innodb-buffer-pool-size=16M --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &)
  wait_for mariadb "$START_TIMEOUT" mariadb --socket="$DIR/run/mysql.sock" -uroot -e "select 1" \
    || daemon_failed mariadb "$DIR/log/mariadb.log"
  # A fresh accounting database at each start: job ids restart at 1 with the new slurmctld state.
  mariadb --socket="$DIR/run/mysql.sock" -uroot -e "DROP DATABASE IF EXISTS perl_slurm_acct"
}

start_slurmdbd() {
  pid_alive "$DIR/run/slurmdbd.pid" && return
  # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF.
  /usr/sbin/slurmdbd || daemon_failed slurmdbd "$DIR/log/slurmdbd.log"
  wait_for slurmdbd "$START_TIMEOUT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT" \
    || daemon_failed slurmdbd "$DIR/log/slurmdbd.log"
}

start_slurmctld() {
  pid_alive "$DIR/run/slurmctld.pid" && return
  rm -rf "${DIR:?}/state/"* "${DIR:?}/spool/"*  # a stale DRAIN/INVAL node state would come back
  /usr/sbin/slurmctld -i -f "$SLURM_CONF" || daemon_failed slurmctld "$DIR/log/slurmctld.log"
  wait_for slurmctld "$START_TIMEOUT" timeout 5 scontrol ping || daemon_failed slurmctld "$DIR/log/slurmctld.log"
}

start_slurmd() {
  pid_alive "$DIR/run/slurmd.pid" && return
  /usr/sbin/slurmd -f "$SLURM_CONF" || daemon_failed slurmd "$DIR/log/slurmd.log"
  wait_for slurmd "$START_TIMEOUT" node_idle || daemon_failed slurmd "$DIR/log/slurmd.log"
}

node_idle() {
  local s
  s="$(timeout 5 sinfo -h -N -n "$NODE" -o %t 2>/dev/null)" || return 1
  [ "$s" = "idle" ] || [ "$s" = "mix" ] || [ "$s" = "alloc" ]
}

start() {
  [ "$(id -u)" -eq 0 ] || die "start needs root (the daemons run as root)."
  for cmd in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/sbin/slurmdbd /usr/sbin/mariadbd; do
    [ -x "$cmd" ] || die "$cmd is not installed; run \`$0 install\` first."
  done
  local t0=$SECONDS
  if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && node_idle; then
    say "already running (SLURM_CONF=$SLURM_CONF)."
    return
  fi
  write_configs
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd
  say "up in $((SECONDS - t0))s: node $NODE, 4 fake GPUs; export SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() { # name, pidfile
  local pid
  [ -s "$2" ] || return 0
  pid="$(cat "$2")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      say "$1 (pid $pid) ignored SIGTERM for 20s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$2"
}

stop_all() {
  if pid_alive "$DIR/run/slurmctld.pid"; then
    timeout 10 scancel --full --quiet --state=PENDING 2>/dev/null || true
    timeout 10 scancel --quiet --user=root 2>/dev/null || true
  fi
  stop_pidfile slurmd "$DIR/run/slurmd.pid"
  stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
  stop_pidfile slurmdbd "$DIR/run/slurmdbd.pid"
  stop_pidfile mariadb "$DIR/run/mariadb.pid"
  stop_pidfile munged "$DIR/run/munged.pid"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) t0=$SECONDS; stop_all; say "stopped in $((SECONDS - t0))s." ;;
  status) pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && pid_alive "$DIR/run/slurmdbd.pid" && node_idle ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) echo "usage: $0 install|start|status|stop|env" >&2; exit 2 ;;
esac
