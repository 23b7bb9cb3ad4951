#!/usr/bin/env bash
# A real, single-machine Slurm cluster (Debian 12, root, no systemd, no cgroups) for integration tests.
#
#   slurm/local-cluster.sh start|stop|status|restart
#   slurm/local-cluster.sh kill-node node2     # freeze node2: SIGKILL its slurmd, SIGSTOP its steps
#   slurm/local-cluster.sh revive-node node2   # reboot node2: kill its frozen steps, restart slurmd, resume
#
# Four slurmd daemons (node1..node4) run on this host on their own ports (multiple-slurmd), with
# slurmctld, slurmdbd (accounting, so sacct works) on MariaDB, and munge for auth. Timeouts are short
# so that a dead slurmd makes its node DOWN and its job NODE_FAIL within ~30 s.
# Every step is idempotent: `start` on a running cluster only checks readiness.
set -euo pipefail
# Daemons started here must not inherit the caller's open files: under `flock LOCK slurm/local-cluster.sh
# restart` munged, MariaDB and slurmdbd kept the lock's descriptor and held the lock for as long as they ran.
for _fd in /proc/$$/fd/*; do
  _fd="${_fd##*/}"
  if [[ "$_fd" -gt 2 && "$_fd" -ne 255 ]]; then eval "exec ${_fd}>&-" 2>/dev/null || true; fi
done
unset _fd

CLUSTER_NAME="${ORCH_SLURM_CLUSTER:-orch}"
NODES=(node1 node2 node3 node4)
CPUS_PER_NODE="${ORCH_SLURM_CPUS:-4}"
PORT_BASE=17001
CTLD_PORT=6817
DBD_PORT=6819
CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm-orch
LOG_DIR=/var/log/slurm-orch
RUN_DIR=/run/slurm-orch
DB_PASS_FILE="$STATE_DIR/db.pass"
READY_TIMEOUT_S="${ORCH_SLURM_READY_TIMEOUT:-90}"
HOST="$(hostname)"

log() { echo "[local-cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Wait until "$@" succeeds, polling every 0.5 s for at most $1 seconds.
wait_for() {
  local timeout="$1"; shift
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=()
  for pkg in slurm-wlm slurmdbd mariadb-server munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

CONF_CHANGED=0

write_slurm_conf() {
  local last_port=$((PORT_BASE + ${#NODES[@]} - 1)) new="$CONF_DIR/slurm.conf.new"
  cat >"$new" <<EOF
# Written by slurm/local-cluster.sh; regenerated on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in this container.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
# Trust the declared CPUs (4 per node on a 2-core host): overcommit on purpose.
SlurmdParameters=config_overrides
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
JobCompType=jobcomp/none
MailProg=/bin/true
# Fast failure detection: a silent slurmd is DOWN after SlurmdTimeout, its jobs end NODE_FAIL.
SlurmdTimeout=10
SlurmctldTimeout=30
ResumeTimeout=30
MessageTimeout=5
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
ReturnToService=2
JobRequeue=1
SchedulerParameters=bf_interval=5
NodeName=node[1-${#NODES[@]}] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$PORT_BASE-$last_port CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN
# Preemption as production sites run it: a job in a higher PriorityTier partition preempts jobs in
# lower ones; the preempted job gets SIGTERM at once, GraceTime seconds to checkpoint, then SIGKILL,
# and is requeued (same job id) if it was submitted requeueable, else it ends PREEMPTED.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 GraceTime=120
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10 PreemptMode=OFF
EOF
  chmod 644 "$new"
  if cmp -s "$new" "$CONF_DIR/slurm.conf"; then rm -f "$new"; return 0; fi
  mv "$new" "$CONF_DIR/slurm.conf"
  CONF_CHANGED=1
}

write_dbd_conf() {
  [[ -s "$DB_PASS_FILE" ]] || { head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE"; }
  chmod 600 "$DB_PASS_FILE"
  umask 077
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# Written by slurm/local-cluster.sh; regenerated on every start.
AuthType=auth/munge
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=$(cat "$DB_PASS_FILE")
StorageLoc=slurm_acct_db
EOF
  umask 022
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

write_config() {
  mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$LOG_DIR" "$RUN_DIR"
  for n in "${NODES[@]}"; do mkdir -p "$STATE_DIR/d/$n"; done
  chmod 700 "$STATE_DIR"
  write_slurm_conf
  write_dbd_conf
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    wait_for 15 bash -c 'munge -n </dev/null | unmunge' || die "munged did not start"
  fi
}

mysql_up() { mysqladmin --protocol=socket ping >/dev/null 2>&1; }

start_mariadb() {
  if ! mysql_up; then
    log "starting MariaDB"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
    (setsid mysqld_safe --user=mysql >"$LOG_DIR/mysqld_safe.log" 2>&1 &)
    wait_for 60 mysql_up || die "MariaDB did not start (see $LOG_DIR/mysqld_safe.log)"
  fi
  local pass; pass="$(cat "$DB_PASS_FILE")"
  mysql --protocol=socket <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
  if ! pid_alive "$RUN_DIR/slurmdbd.pid"; then
    log "starting slurmdbd"
    slurmdbd
  fi
  wait_for 60 sacctmgr -n list cluster || die "slurmdbd does not answer (see $LOG_DIR/slurmdbd.log)"
  if ! sacctmgr -n -P list cluster format=Cluster | grep -qx "$CLUSTER_NAME"; then
    log "registering cluster $CLUSTER_NAME"
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  fi
}

start_slurmctld() {
  if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
    log "starting slurmctld"
    slurmctld
  elif ((CONF_CHANGED)); then
    # Node or port changes need `restart`; everything else is picked up here.
    log "slurm.conf changed: scontrol reconfigure"
    scontrol reconfigure
  fi
  wait_for 30 scontrol ping || die "slurmctld does not answer (see $LOG_DIR/slurmctld.log)"
}

start_slurmd() {
  local node="$1"
  pid_alive "$RUN_DIR/slurmd-$node.pid" && return 0
  log "starting slurmd $node"
  slurmd -N "$node"
}

all_nodes_idle() {
  local states
  states="$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)" || return 1
  [[ "$(grep -c ' idle$' <<<"$states")" -eq "${#NODES[@]}" ]]
}

cluster_ready() { all_nodes_idle && sacct -n -X -S now-1minutes >/dev/null 2>&1; }

# A node left DOWN or DRAINED (an earlier kill-node, a bad registration) comes back here.
resume_unavailable_nodes() {
  local n
  wait_for 10 bash -c "! sinfo -h -N -o '%T' | grep -qx unknown" || true
  for n in $(sinfo -h -N -t down,drain,drained,draining,fail -o '%N' | sort -u); do
    scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
  done
}

cmd_start() {
  install_packages
  write_config
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurmctld
  for n in "${NODES[@]}"; do start_slurmd "$n"; done
  resume_unavailable_nodes
  log "waiting up to ${READY_TIMEOUT_S}s for ${#NODES[@]} idle nodes and sacct"
  wait_for "$READY_TIMEOUT_S" cluster_ready || { sinfo -N >&2 || true; die "cluster not ready"; }
  sinfo -N
}

stop_pidfile() {
  local pidfile="$1" pid
  pid_alive "$pidfile" || return 0
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  wait_for 15 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
  for n in "${NODES[@]}"; do stop_pidfile "$RUN_DIR/slurmd-$n.pid"; done
  stop_pidfile "$RUN_DIR/slurmctld.pid"
  stop_pidfile "$RUN_DIR/slurmdbd.pid"
  if mysql_up; then log "stopping MariaDB"; mysqladmin --protocol=socket shutdown || true; fi
  local munge_pid=/run/munge/munged.pid
  if pid_alive "$munge_pid"; then log "stopping munged"; stop_pidfile "$munge_pid"; fi
  log "stopped"
}

cmd_status() {
  sinfo -N || true
  cluster_ready || { log "cluster NOT ready"; return 1; }
  log "cluster ready"
}

# Pids of this node's slurmd and slurmstepd processes: they hold its slurmd log file open (slurmstepd
# overwrites its environ with its process title, so the log is the one stable trace of its node).
node_daemon_pids() {
  find /proc/[0-9]*/fd -maxdepth 1 -lname "$LOG_DIR/slurmd-$1.log" 2>/dev/null | cut -d/ -f3 | sort -u
}

# A pid and all its descendants, parents first.
pid_tree() {
  local pid="$1" child
  echo "$pid"
  for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do pid_tree "$child"; done
}

node_state() { sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1; }
node_responding() { local st; st="$(node_state "$1")"; [[ -n "$st" && "$st" != *'*' ]]; }
node_in_state() { [[ "$(node_state "$1")" == "$2" ]]; }

check_node() { [[ " ${NODES[*]} " == *" $1 "* ]] || die "unknown node '$1' (have: ${NODES[*]})"; }

cmd_kill_node() {
  local node="$1" pidfile="$RUN_DIR/slurmd-$1.pid" pid
  check_node "$node"
  if pid_alive "$pidfile"; then kill -9 "$(cat "$pidfile")"; fi
  # Freeze (not kill) its job steps: a dead machine sends no EOF, it just goes silent.
  for pid in $(node_daemon_pids "$node"); do
    for p in $(pid_tree "$pid"); do kill -STOP "$p" 2>/dev/null || true; done
  done
  log "$node: slurmd killed, steps frozen"
}

cmd_revive_node() {
  local node="$1" pid
  check_node "$node"
  # A rebooted machine has none of its old processes.
  for pid in $(node_daemon_pids "$node"); do
    for p in $(pid_tree "$pid"); do kill -9 "$p" 2>/dev/null || true; done
  done
  rm -f "$RUN_DIR/slurmd-$node.pid"
  start_slurmd "$node"
  # ReturnToService=2 brings it back on registration; resume covers a node that an admin drained.
  wait_for 30 node_responding "$node" || die "$node: slurmd did not register"
  scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  wait_for 30 node_in_state "$node" idle || die "$node: not idle after revive"
  log "$node: revived"
}

main() {
  [[ $EUID -eq 0 ]] || die "run as root"
  case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    kill-node) [[ -n "${2:-}" ]] || die "usage: $0 kill-node NODE"; cmd_kill_node "$2" ;;
    revive-node) [[ -n "${2:-}" ]] || die "usage: $0 revive-node NODE"; cmd_revive_node "$2" ;;
    *) echo "usage: $0 start|stop|restart|status|kill-node NODE|revive-node NODE" >&2; exit 2 ;;
  esac
}

main "$@"
