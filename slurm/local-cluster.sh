#!/usr/bin/env bash
# A real, single-machine Slurm cluster (Debian 12, root, no systemd, no cgroups) for integration tests.
#
#   slurm/local-cluster.sh start|stop|status|restart
#   slurm/local-cluster.sh kill-node node2      # freeze node2: SIGKILL its slurmd, SIGSTOP its steps
#   slurm/local-cluster.sh revive-node node2    # reboot node2: kill its frozen steps, restart slurmd, resume
#   slurm/local-cluster.sh partition-node node2 # namespaced only: node2's link down, its processes alive
#   slurm/local-cluster.sh heal-node node2      # namespaced only: link up, rate limit removed
#   slurm/local-cluster.sh slow-node node2 1000 # namespaced only: tbf-limit node2's egress to 1000 kbit/s
#   slurm/local-cluster.sh env                  # the SLURM_CONF line for this instance (eval it)
#
# Four slurmd daemons (node1..node4) on this host on their own ports (multiple-slurmd), with slurmctld,
# slurmdbd (accounting, so sacct works) on MariaDB, and munge for auth. Timeouts are short so that a dead
# slurmd makes its node DOWN and its job NODE_FAIL within ~30 s.
#
# Nodes that are hosts (the default as root with iproute2 and nsenter; ORCH_SLURM_NETNS=0 turns it off,
# and without them the cluster is plain and says why): each `slurmd -N nodeN`
# runs in its own network namespace (entered with nsenter) with its own address on a bridge (NodeAddr), so a
# node's loopback is its own, srun and slurmctld reach it across the bridge, and a batch script with its
# srun runs inside its first node. slurmctld, slurmdbd, MariaDB and munge stay on the host side of the
# bridge (SlurmctldAddr = the bridge address); munge's unix socket is shared through the file system, as
# is everything else (like NFS). Nothing uses the hostname to find an address: Debian maps it to a
# loopback address, which inside a namespace is the node itself.
#
# A second, independent instance (its own conf dir, state/log/run dirs, ports, cluster name, subnet):
# ORCH_SLURM_INSTANCE=NAME; every Slurm command then needs SLURM_CONF=/etc/slurm-NAME/slurm.conf
# (`eval "$(ORCH_SLURM_INSTANCE=NAME slurm/local-cluster.sh env)"`). MariaDB and munge are shared.
# Every step is idempotent: `start` on a running cluster only checks readiness.
set -euo pipefail
# Daemons started here must not inherit the caller's open files: under `flock LOCK slurm/local-cluster.sh
# restart` munged, MariaDB and slurmdbd kept the lock's descriptor and held the lock for as long as they ran.
for _fd in /proc/$$/fd/*; do
  _fd="${_fd##*/}"
  if [[ "$_fd" -gt 2 && "$_fd" -ne 255 ]]; then eval "exec ${_fd}>&-" 2>/dev/null || true; fi
done
unset _fd

INSTANCE="${ORCH_SLURM_INSTANCE:-}"
[[ "$INSTANCE" =~ ^[a-z0-9]{0,12}$ ]] || { echo "ORCH_SLURM_INSTANCE must be [a-z0-9]{1,12}" >&2; exit 2; }
if [[ -z "$INSTANCE" ]]; then
  IDX=0; SUFFIX=""
else
  IDX=$(( $(cksum <<<"$INSTANCE" | cut -d' ' -f1) % 40 + 1 )); SUFFIX="-$INSTANCE"
fi
CLUSTER_NAME="${ORCH_SLURM_CLUSTER:-orch${INSTANCE}}"
NODES=(node1 node2 node3 node4)
CPUS_PER_NODE="${ORCH_SLURM_CPUS:-4}"
if ((IDX == 0)); then PORT_BASE=17001; CTLD_PORT=6817; DBD_PORT=6819
else PORT_BASE=$((17000 + 10 * IDX + 1)); CTLD_PORT=$((16800 + 10 * IDX)); DBD_PORT=$((16802 + 10 * IDX)); fi
CONF_DIR="/etc/slurm$SUFFIX"
STATE_DIR="/var/lib/slurm-orch$SUFFIX"
LOG_DIR="/var/log/slurm-orch$SUFFIX"
RUN_DIR="/run/slurm-orch$SUFFIX"
ACCT_DB="slurm_acct_db${INSTANCE:+_$INSTANCE}"
DB_PASS_FILE="$STATE_DIR/db.pass"
DB_USER="slurm${INSTANCE:+_$INSTANCE}"
MARKER="$CONF_DIR/orch-local-cluster.json"  # read by the orchestrator (slurm/local_cluster.py)
READY_TIMEOUT_S="${ORCH_SLURM_READY_TIMEOUT:-90}"
HOST="$(hostname)"
export SLURM_CONF="$CONF_DIR/slurm.conf"

# The namespaced network: one /24 per instance, a bridge on the host, a namespace + veth per node.
SUBNET_PREFIX="10.214.$IDX"
BRIDGE_ADDR="$SUBNET_PREFIX.1"
BRIDGE="oslbr$IDX"
NODE_IF=eth0
node_ns() { echo "orch-sl$IDX-$1"; }
node_index() { local i; for i in "${!NODES[@]}"; do [[ "${NODES[$i]}" == "$1" ]] && echo "$i"; done; }
node_addr() { echo "$SUBNET_PREFIX.$((2 + $(node_index "$1")))"; }
node_veth() { echo "osl${IDX}v$(node_index "$1")"; }

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

# ---- the namespaced network ---------------------------------------------------------------------------
DEFAULT_NETNS=auto  # nodes are hosts wherever this machine allows it
NETNS=0
PLAIN_WHY=""
CTLD_ADDR=127.0.0.1

# NETNS=1 when the nodes are hosts; otherwise say once why the cluster is plain.
decide_netns() {
  local want="${ORCH_SLURM_NETNS:-$DEFAULT_NETNS}" why=""
  case "$want" in
    0|off|no|false) why="ORCH_SLURM_NETNS=$want" ;;
    *) if [[ $EUID -ne 0 ]]; then why="not running as root"
       elif ! command -v ip >/dev/null; then why="iproute2 ('ip') is not installed"
       elif ! command -v nsenter >/dev/null; then why="util-linux's nsenter is not installed"
       elif ! netns_possible; then why="network namespaces cannot be created here"; fi ;;
  esac
  if [[ -z "$why" ]]; then NETNS=1; CTLD_ADDR="$BRIDGE_ADDR"; else PLAIN_WHY="$why"; fi
}

# Whether this kernel/container lets us create a namespace (the nodes' may already exist).
netns_possible() {
  ns_exists "$(node_ns "${NODES[0]}")" && return 0
  local probe="orch-sl$IDX-probe"
  ip netns add "$probe" 2>/dev/null || return 1
  ip netns del "$probe" 2>/dev/null || true
}

ns_exists() { ip netns list 2>/dev/null | cut -d' ' -f1 | grep -qx "$1"; }

add_node_netns() {
  local node="$1" ns veth addr
  ns="$(node_ns "$node")"; veth="$(node_veth "$node")"; addr="$(node_addr "$node")"
  if ns_exists "$ns" && ip -n "$ns" -o -4 addr show dev "$NODE_IF" 2>/dev/null | grep -q " $addr/"; then
    return 0
  fi
  if ns_exists "$ns"; then ip netns del "$ns"; fi
  ip link del "$veth" 2>/dev/null || true
  ip netns add "$ns"
  ip link add "$veth" type veth peer name "${veth}p"
  ip link set "${veth}p" netns "$ns"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" link set "${veth}p" name "$NODE_IF"
  ip -n "$ns" addr add "$addr/24" dev "$NODE_IF"
  ip -n "$ns" link set "$NODE_IF" up
  ip -n "$ns" link set lo up
  # The host's other addresses (a supervisor advertising the login node's cluster address) via the bridge.
  ip -n "$ns" route replace default via "$BRIDGE_ADDR" dev "$NODE_IF"
}

setup_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($BRIDGE_ADDR/24)"
    ip link add "$BRIDGE" type bridge
  fi
  ip -o -4 addr show dev "$BRIDGE" | grep -q " $BRIDGE_ADDR/" || ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  local n; for n in "${NODES[@]}"; do add_node_netns "$n"; done
  add_hosts_entries
}

# Every address of the instance gets a name in /etc/hosts, as a real cluster's nodes have in its DNS or
# hosts files. Without one, the reverse lookup c10d does on each store connection (getnameinfo; the store
# listens on IPv6, so the peer is the IPv4-mapped ::ffff:a.b.c.d) waits for the host's resolver,
# unreachable from a node's namespace: 10 s of timeouts on every rank (re)start.
HOSTS_TAG="# orch-local-cluster $CLUSTER_NAME"
add_hosts_entries() {
  local n addr name line
  for n in controller "${NODES[@]}"; do
    if [[ "$n" == controller ]]; then addr="$BRIDGE_ADDR"; else addr="$(node_addr "$n")"; fi
    name="$CLUSTER_NAME-$n"
    for line in "$addr $name $HOSTS_TAG" "::ffff:$addr $name $HOSTS_TAG"; do
      grep -qxF "$line" /etc/hosts || echo "$line" >>/etc/hosts  # appended in place: /etc/hosts may be a mount
    done
  done
}

remove_hosts_entries() {
  local kept
  kept="$(grep -vF "$HOSTS_TAG" /etc/hosts || true)"
  [[ "$kept" == "$(cat /etc/hosts)" ]] || printf '%s\n' "$kept" >/etc/hosts
}

teardown_network() {
  local n
  for n in "${NODES[@]}"; do if ns_exists "$(node_ns "$n")"; then ip netns del "$(node_ns "$n")"; fi; done
  ip link del "$BRIDGE" 2>/dev/null || true
  remove_hosts_entries
}

# Run a command on NODE: inside its namespace when the nodes are hosts.
on_node() {
  local node="$1"; shift
  # nsenter, not `ip netns exec`: that remounts /sys, hiding /sys/fs/cgroup, and slurmd will not start.
  if ((NETNS)); then nsenter --net="/run/netns/$(node_ns "$node")" "$@"; else "$@"; fi
}

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

# One NodeName line per node in a namespace (its own address and port), else one line for all.
node_lines() {
  local last_port=$((PORT_BASE + ${#NODES[@]} - 1)) i
  local common="CPUs=$CPUS_PER_NODE RealMemory=4000 State=UNKNOWN"
  if ((NETNS == 0)); then
    echo "NodeName=node[1-${#NODES[@]}] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$PORT_BASE-$last_port $common"
    return 0
  fi
  for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeHostname=$HOST NodeAddr=$(node_addr "${NODES[$i]}") Port=$((PORT_BASE + i)) $common"
  done
}

# What the orchestrator reads to know this is the local cluster and how its nodes are built.
write_marker() {
  local n sep="" nodes=""
  for n in "${NODES[@]}"; do
    if ((NETNS)); then
      nodes+="$sep\"$n\": {\"addr\": \"$(node_addr "$n")\", \"netns\": \"$(node_ns "$n")\", \"netif\": \"$NODE_IF\"}"
    else
      nodes+="$sep\"$n\": {\"addr\": \"127.0.0.1\"}"
    fi
    sep=", "
  done
  cat >"$MARKER.new" <<EOF
{"cluster": "$CLUSTER_NAME", "instance": "$INSTANCE", "netns": $( ((NETNS)) && echo true || echo false), "controller_addr": "$CTLD_ADDR", "nodes": {$nodes}}
EOF
  chmod 644 "$MARKER.new"
  mv "$MARKER.new" "$MARKER"
}

write_slurm_conf() {
  local new="$CONF_DIR/slurm.conf.new"
  cat >"$new" <<EOF
# Written by slurm/local-cluster.sh; regenerated on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$HOST($CTLD_ADDR)
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
AccountingStorageHost=$( ((NETNS)) && echo "$CTLD_ADDR" || echo localhost)
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
$(node_lines)
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
StorageUser=$DB_USER
StoragePass=$(cat "$DB_PASS_FILE")
StorageLoc=$ACCT_DB
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
  write_marker
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
CREATE DATABASE IF NOT EXISTS $ACCT_DB;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON $ACCT_DB.* TO '$DB_USER'@'localhost';
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
  log "starting slurmd $node${NETNS:+}$( ((NETNS)) && echo " in $(node_ns "$node") ($(node_addr "$node"))")"
  on_node "$node" slurmd -N "$node"
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

# The mode (plain or namespaced) the running daemons were started in, from the last marker.
running_mode() { [[ -f "$MARKER" ]] && grep -q '"netns": true' "$MARKER" && echo 1 || echo 0; }

# Machines powered off: slurmd stopped, then whatever still runs on the node (job steps, their tasks) killed,
# before its namespace goes away (a step left in a deleted namespace can never be reached or cleaned up).
stop_cluster_daemons() {
  local n
  for n in "${NODES[@]}"; do stop_pidfile "$RUN_DIR/slurmd-$n.pid"; kill_node_processes "$n"; done
  stop_pidfile "$RUN_DIR/slurmctld.pid"
}

cmd_start() {
  install_packages
  [[ -z "$PLAIN_WHY" ]] || log "plain cluster (every slurmd on this host's loopback): $PLAIN_WHY"
  if [[ "$(running_mode)" != "$NETNS" ]] && pid_alive "$RUN_DIR/slurmctld.pid"; then
    log "switching between plain and namespaced nodes: restarting slurmctld and slurmd"
    stop_cluster_daemons
  fi
  if ((NETNS)); then setup_network; fi
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
  stop_cluster_daemons
  stop_pidfile "$RUN_DIR/slurmdbd.pid"
  teardown_network
  if [[ -n "$INSTANCE" ]]; then log "stopped (MariaDB and munged are shared: left running)"; return 0; fi
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

kill_node_processes() {
  local pid p
  for pid in $(node_daemon_pids "$1"); do
    for p in $(pid_tree "$pid"); do kill -9 "$p" 2>/dev/null || true; done
  done
}

cmd_revive_node() {
  local node="$1"
  check_node "$node"
  kill_node_processes "$node"  # a rebooted machine has none of its old processes
  rm -f "$RUN_DIR/slurmd-$node.pid"
  if ((NETNS)); then setup_network; heal_link "$node"; fi
  start_slurmd "$node"
  # ReturnToService=2 brings it back on registration; resume covers a node that an admin drained.
  wait_for 30 node_responding "$node" || die "$node: slurmd did not register"
  scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  wait_for 30 node_in_state "$node" idle || die "$node: not idle after revive"
  log "$node: revived"
}

need_netns() { ((NETNS)) || die "$1 needs the namespaced cluster (root, iproute2, ORCH_SLURM_NETNS not 0)"; }

heal_link() {
  local ns; ns="$(node_ns "$1")"
  ip -n "$ns" link set "$NODE_IF" up
  ip netns exec "$ns" tc qdisc del dev "$NODE_IF" root 2>/dev/null || true
  ip -n "$ns" route replace default via "$BRIDGE_ADDR" dev "$NODE_IF"
}

# A partition: the node's link goes down; its slurmd and steps keep running, unreachable.
cmd_partition_node() {
  check_node "$1"; need_netns partition-node
  ip -n "$(node_ns "$1")" link set "$NODE_IF" down
  log "$1: link down (processes alive)"
}

cmd_heal_node() {
  check_node "$1"; need_netns heal-node
  heal_link "$1"
  log "$1: link up, no rate limit"
}

# A slow link: a token-bucket filter on the node's egress (netem is not in these kernels; tbf is).
cmd_slow_node() {
  local node="$1" rate="$2" burst
  check_node "$node"; need_netns slow-node
  [[ "$rate" =~ ^[0-9]+$ ]] && ((rate >= 8)) || die "slow-node: RATE is kbit/s, an integer >= 8"
  burst=$(( rate * 1000 / 8 / 100 )); ((burst >= 1600)) || burst=1600  # 10 ms of traffic, >= 1 packet
  ip netns exec "$(node_ns "$node")" tc qdisc replace dev "$NODE_IF" root tbf rate "${rate}kbit" \
    burst "$burst" latency 200ms
  log "$node: egress limited to $rate kbit/s"
}

main() {
  [[ $EUID -eq 0 ]] || die "run as root"
  decide_netns
  case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    kill-node) [[ -n "${2:-}" ]] || die "usage: $0 kill-node NODE"; cmd_kill_node "$2" ;;
    revive-node) [[ -n "${2:-}" ]] || die "usage: $0 revive-node NODE"; cmd_revive_node "$2" ;;
    partition-node) [[ -n "${2:-}" ]] || die "usage: $0 partition-node NODE"; cmd_partition_node "$2" ;;
    heal-node) [[ -n "${2:-}" ]] || die "usage: $0 heal-node NODE"; cmd_heal_node "$2" ;;
    slow-node) [[ -n "${3:-}" ]] || die "usage: $0 slow-node NODE RATE_KBIT"; cmd_slow_node "$2" "$3" ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 start|stop|restart|status|env|kill-node N|revive-node N|partition-node N|heal-node N|slow-node N KBIT" >&2
       exit 2 ;;
  esac
}

main "$@"
