#!/usr/bin/env bash
# A real single-node SLURM cluster (with accounting) on this machine, for tests and CI.
#
#   scripts/slurm_cluster.sh install   # apt-get the packages (no-op when already installed)
#   scripts/slurm_cluster.sh start     # start munged, mariadbd, slurmdbd, slurmctld, slurmd
#   scripts/slurm_cluster.sh status    # exit 0 when every daemon runs and the node is usable
#   scripts/slurm_cluster.sh stop      # cancel jobs, stop the daemons in reverse order
#   eval "$(scripts/slurm_cluster.sh env)"   # export SLURM_CONF for sbatch/sacct/submitit
#
# Needs root, no systemd. Auth is munge (AuthType default); every file but munged's socket lives
# under $SLURM_CLUSTER_DIR (default /tmp/saes-slurm), which must be short (unix socket paths) and
# enterable by user munge. Fixed ports 6817-6819 (slurm) and 6820 (mariadb): one cluster per
# machine. /etc/slurm/slurm.conf is symlinked to our config when absent or already a symlink,
# so clients work even without SLURM_CONF.
set -euo pipefail

DIR=$(realpath -m "${SLURM_CLUSTER_DIR:-/tmp/saes-slurm}")
CONF=$DIR/etc/slurm.conf
NODE=$(hostname -s)
DB_PORT=6820
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop is the reverse
export SLURM_CONF=$CONF

die() { echo "slurm_cluster: error: $*" >&2; exit 1; }
log() { echo "slurm_cluster: $*"; }
pid_of() { cat "$DIR/run/$1.pid" 2>/dev/null || true; }
# pid_alive PID: running, i.e. not gone and not a zombie (this container's init reaps slowly).
pid_alive() { [[ -n $1 && $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) =~ ^[^ZX]$ ]]; }
# alive DAEMON: its pid file names a live process with that name (guards against reused pids).
alive() { local p; p=$(pid_of "$1"); pid_alive "$p" && [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$1" ]]; }
need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

# Node state as sinfo sees it ('idle', 'mix', 'alloc', 'down*', ...), empty if unreachable.
node_state() { timeout 5 sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1 || true; }

# healthy: every daemon runs and the node takes jobs (not down, drained or unresponsive '*').
healthy() {
  local d; for d in "${DAEMONS[@]}"; do alive "$d" || return 1; done
  [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]]
}

# launch NAME CMD...: start a self-daemonizing daemon, detached from our stdio.
# wait_for SECONDS WHAT CMD...: retry CMD every 0.2 s; fail on timeout, or at once when a
# daemon started so far ($STARTED) has exited (after a 2 s grace for writing its pid file).
STARTED=()
launch() { local d=$1; shift; "$@" </dev/null >/dev/null 2>&1 || die "$d failed, see $DIR/log/$d.log"; STARTED+=("$d"); }
wait_for() {
  local secs=$1 what=$2 t0=$SECONDS d; shift 2
  until "$@" >/dev/null 2>&1; do
    for d in "${STARTED[@]}"; do
      ((SECONDS - t0 < 2)) || alive "$d" || { tail -n 20 "$DIR/log/$d.log" >&2; die "$d exited, see $DIR/log/$d.log"; }
    done
    ((SECONDS - t0 < secs)) || { tail -n 15 "$DIR"/log/*.log >&2; die "timed out after ${secs}s waiting for $what"; }
    sleep 0.2
  done
}

cmd_install() {
  local p missing=()
  for p in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then log "packages already installed"; return; fi
  need_root; log "installing: ${missing[*]}"
  # Keep package scripts from starting system-wide daemons (we run our own).
  local policy="" rc=0
  [[ -e /usr/sbin/policy-rc.d ]] || { policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; }
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null; } || rc=$?
  if [[ -n $policy ]]; then rm -f "$policy"; fi
  ((rc == 0)) || die "apt-get install failed (exit $rc)"
  log "installed"
}

write_configs() {
  local mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))
  cat >"$CONF" <<EOF
ClusterName=saes
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0   # schedule batch jobs at once (default waits up to 3 s)
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF; it must be mode 600.
  (umask 077; cat >"$DIR/etc/slurmdbd.conf" <<EOF
DbdHost=$NODE
DbdAddr=127.0.0.1
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  )
  # Point the default client config at ours, unless someone else owns /etc/slurm/slurm.conf.
  if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
    mkdir -p /etc/slurm && ln -sfn "$CONF" /etc/slurm/slurm.conf
  fi
}

start_mariadb() {
  local sock=$DIR/mysql.sock
  if [[ ! -d $DIR/mysql/mysql ]]; then
    mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --skip-test-db \
      --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
  fi
  setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$sock" \
    --port=$DB_PORT --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$DIR/run/mariadbd.pid" \
    --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  STARTED+=(mariadbd)
  wait_for 60 mariadbd mariadb-admin --no-defaults --socket="$sock" ping
  mariadb --no-defaults --socket="$sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "could not create the database user"
}

cmd_start() {
  need_root
  command -v slurmctld >/dev/null || die "SLURM is not installed; run: $0 install"
  if healthy; then log "already running (node $NODE: $(node_state))"; return; fi
  cmd_stop   # clear whatever half-started cluster is left
  trap 'echo "slurm_cluster: start failed; stopping what started" >&2; cmd_stop >&2' EXIT
  ((${#DIR} < 80)) || die "SLURM_CLUSTER_DIR is too long for unix sockets: $DIR"
  getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >>/etc/hosts
  mkdir -p "$DIR"/{etc,run,log,state,spool,munge}
  write_configs

  # munged runs as user munge, which must be able to enter $DIR (pytest's 0700 tmp dirs fail).
  # Its socket stays at the default /run/munge/munge.socket.2: slurm clients talking to slurmdbd
  # ignore AuthInfo=socket=... in 22.05.
  [[ -f /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
  mkdir -p /run/munge && chown munge: /run/munge "$DIR/munge" && chmod 755 /run/munge
  runuser -u munge -- test -x "$DIR/munge" || die "user munge cannot enter $DIR (use e.g. /tmp/x)"
  ln -sfn ../munge/munged.pid "$DIR/run/munged.pid"; ln -sfn ../munge/munged.log "$DIR/log/munged.log"
  launch munged runuser -u munge -- munged --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"

  start_mariadb
  launch slurmdbd slurmdbd   # finds slurmdbd.conf next to $SLURM_CONF
  wait_for 60 slurmdbd sacctmgr -n list cluster
  launch slurmctld slurmctld -f "$CONF"
  launch slurmd slurmd -f "$CONF"
  wait_for 60 "node $NODE to be idle" healthy
  trap - EXIT
  log "running: node $NODE $(node_state), partition debug, SLURM_CONF=$CONF"
}

cmd_stop() {
  local i d p end=$((SECONDS + 15))
  # Cancel jobs first so that no job processes outlive the cluster.
  if alive slurmctld && squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null; then
    while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && ((SECONDS < end)); do sleep 0.2; done
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[i]}; alive "$d" || continue; p=$(pid_of "$d")
    kill -TERM "$p"; end=$((SECONDS + 30))
    while pid_alive "$p" && ((SECONDS < end)); do sleep 0.1; done
    pid_alive "$p" && { log "$d ($p) ignored SIGTERM, killing"; kill -KILL "$p"; }
    log "stopped $d ($p)"
  done
}

cmd_status() {
  local d
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "$d: running (pid $(pid_of "$d"))"; else echo "$d: stopped"; fi
  done
  echo "node $NODE: $(node_state)"
  healthy || return 3
}

case ${1:-} in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 install|start|stop|status|env   (SLURM_CLUSTER_DIR=$DIR)" >&2; exit 2 ;;
esac
