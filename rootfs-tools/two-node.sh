#!/usr/bin/env bash
# two-node.sh: faasd on many nodes, shown with two. Each "node" is a faasd in a network
# namespace of its own (own state dir, cgroup parent, control address), joined by veth
# pairs to a bridge in a third namespace, where HAProxy balances both nodes' gateway ports
# with HTTP health checks on /healthz. The same functions file is applied on both with
# `faas apply`; then:
#   1. N requests through HAProxy, all must succeed, served by both nodes;
#   2. N more, node a's faasd SIGKILLed once a third have been answered: all must
#      still succeed (HAProxy marks a DOWN, and retries on another node what a's death
#      cut off), and how long HAProxy took to stop sending to a is measured;
#   3. node a's faasd started again on its state dir (its recovery removes the containers
#      the kill left): HAProxy marks it UP and it serves again.
# Then everything is stopped by pid (HAProxy, both daemons) and the namespaces removed.
#
# All traffic stays inside namespaces made here: the script first moves itself into a new
# network and mount namespace (the balancer's), so nothing is configured in the caller's.
# Run as root:  bash rootfs-tools/two-node.sh [--requests 1000] [--concurrency 4]
#   [--faasd BIN] [--faas BIN] [--image TAR] [--work DIR] [--keep]
# Prints a report; its last lines are "two-node: KEY=VALUE" for the kernel test
# (tests/kernel/two_node.rs). Exits 1 on any failed check, naming it.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
faasd=$repo/target/release/faasd
faas=$repo/target/release/faas
image=$repo/target/test-images/test-handler.tar
requests=1000
concurrency=4
work=
keep=0
while (($#)); do
  case $1 in
    --faasd) faasd=$2; shift 2 ;;
    --faas) faas=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "two-node: unknown argument $1" >&2; exit 2 ;;
  esac
done

die() { echo "two-node: FAILED: $*" >&2; exit 1; }

if [[ "${TWO_NODE_INSIDE:-}" != 1 ]]; then
  [ "$(id -u)" = 0 ] || die "needs root (namespaces, cgroups)"
  for tool in haproxy ab curl ip unshare nsenter; do
    command -v "$tool" >/dev/null || die "$tool is missing (rootfs-tools/test-all.sh installs it)"
  done
  for f in "$faasd" "$faas" "$image"; do [ -e "$f" ] || die "$f is missing"; done
  [ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/faasd-two-node.XXXXXX")
  mkdir -p "$work"
  # The balancer's namespace: this process, from here on. unshare execs bash in place
  # (no fork), so this pid stays the script's, and its TERM trap still applies.
  TWO_NODE_INSIDE=1 exec unshare --net --mount --propagation private \
    bash "${BASH_SOURCE[0]}" --faasd "$faasd" --faas "$faas" --image "$image" \
    --requests "$requests" --concurrency "$concurrency" --work "$(realpath "$work")" \
    $( ((keep)) && echo --keep)
fi

# --- the layout ------------------------------------------------------------------------

readonly nodes=(a b)
declare -A node_ip=([a]=10.250.0.11 [b]=10.250.0.12)
readonly bridge_ip=10.250.0.1
readonly lb=127.0.0.1:8000 stats=127.0.0.1:8404
readonly cgroup_prefix=faasd-two-node-$$
declare -A pid=()
haproxy_pid=
started_pids=()

now_ms() { date +%s%3N; }
in_node() { local n=$1; shift; nsenter --net="$work/netns-$n" "$@"; }
control() { in_node "$1" curl -sf --max-time 5 "http://127.0.0.1:8080$2"; }

# Everything this run made, by pid and by name; also on a failure or SIGTERM.
teardown() {
  local rc=$?
  set +e
  [ -n "$haproxy_pid" ] && kill -TERM "$haproxy_pid" 2>/dev/null
  for n in "${nodes[@]}"; do
    [ -n "${pid[$n]:-}" ] && kill -TERM "${pid[$n]}" 2>/dev/null
  done
  for p in $haproxy_pid "${pid[@]}"; do wait "$p" 2>/dev/null; done
  # Only after a failure between the kill and the restart: containers that node a's
  # SIGKILLed faasd left behind (its own restart would have removed them).
  for n in "${nodes[@]}"; do sweep_cgroups "$cgroup_prefix-$n"; done
  # The namespaces' files, and anything a failed run left mounted below the work dir.
  # All are in this script's mount namespace; deepest first.
  awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount "$m"; done
  ((rc == 0)) || diagnose >&2
  if ((rc == 0 && !keep)); then rm -rf "$work"; else echo "two-node: logs kept in $work" >&2; fi
  exit "$rc"
}
trap teardown EXIT
trap 'echo "two-node: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'exit 143' TERM INT

# What explains a failure, for a log that outlives $work (the VM's tmpfs does not).
diagnose() {
  local f
  echo "--- HAProxy: answers by server, status, termination; its own messages"
  awk '$1 == "req" && $3 != "<STATS>" {print $3, $4, $6}' "$work/haproxy.log" 2>/dev/null | sort | uniq -c
  grep -v '^req ' "$work/haproxy.log" 2>/dev/null | tail -20
  for f in "$work"/ab-*.txt; do
    [ -f "$f" ] && { echo "--- $f"; grep -E '^(Complete requests|Failed requests|Non-2xx responses|  +\(Connect)|apr_|timed out' "$f"; }
  done
  for f in "$work"/node-*/faasd.log; do
    [ -f "$f" ] && { echo "--- $f (warnings and errors)"; grep -aE 'WARN|ERROR' "$f" | tail -10; }
  done
}

# The cgroup directories named $1 in every hierarchy (v2, or each v1 controller).
cgroup_dirs() {
  find /sys/fs/cgroup -maxdepth 2 -type d -name "$1" 2>/dev/null
}

# Kills (by pid, from its cgroup.procs) whatever is left in cgroup parent $1, then removes it.
sweep_cgroups() {
  local dir
  for dir in $(cgroup_dirs "$1"); do
    find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null
    sleep 0.2
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
  done
}

# A persistent network namespace bound to $work/netns-$1, with lo up and eth0 (address
# node_ip) joined to the bridge in this, the balancer's, namespace.
make_node_netns() {
  local n=$1 ns=$work/netns-$1
  touch "$ns"
  unshare --net="$ns" true
  in_node "$n" ip link set lo up
  # Made inside the node; the peer goes to the namespace of this process ($$).
  in_node "$n" ip link add eth0 type veth peer name "veth-$n" netns $$
  in_node "$n" ip addr add "${node_ip[$n]}/24" dev eth0
  in_node "$n" ip link set eth0 up
  ip link set "veth-$n" master br0 up
}

# Starts node $1's faasd (gateway on its own address) and waits for its control API.
start_node() {
  local n=$1
  mkdir -p "$work/node-$n"
  # Not through in_node: a backgrounded function would be a subshell, and $! its pid.
  # nsenter execs faasd in place, so $! is faasd's own pid: what is SIGKILLed later.
  NO_COLOR=1 nsenter --net="$work/netns-$n" "$faasd" --state-dir "$work/node-$n/state" --listen 127.0.0.1:8080 \
    --gateway "${node_ip[$n]}:8081" --cgroup-parent "$cgroup_prefix-$n" \
    </dev/null >>"$work/node-$n/faasd.log" 2>&1 &
  pid[$n]=$!
  started_pids+=("$!")
  for _ in $(seq 300); do
    if control "$n" /healthz >/dev/null; then
      # (Its exe is a sealed memfd copy: the command line tells it.)
      [[ "$(tr '\0' ' ' <"/proc/${pid[$n]}/cmdline")" == "$faasd --state-dir $work/node-$n/state "* ]] ||
        die "pid ${pid[$n]} is not node $n's faasd"
      return 0
    fi
    kill -0 "${pid[$n]}" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$work/node-$n/faasd.log" >&2
  die "node $n's faasd did not answer /healthz"
}

# The functions file applied on node $1, twice: the second apply must change nothing.
apply_functions() {
  local again
  in_node "$1" "$faas" --url http://127.0.0.1:8080 apply -f "$work/functions.toml" >/dev/null
  again=$(in_node "$1" "$faas" --url http://127.0.0.1:8080 apply -f "$work/functions.toml")
  echo "two-node: node $1, second apply: ${again//$'\n'/; }"
  [[ $again == *"0 created, 0 updated, 0 removed"* ]] || die "the second apply on node $1 changed something"
}

# Requests node $1's faasd has served for function hello (since it started).
served() {
  control "$1" /metrics | awk '$1 == "faasd_requests_total{function=\"hello\"}" {print $2; f=1} END {if (!f) print 0}'
}

# HAProxy's view of server $1 (nodea, nodeb): its status (UP, DOWN, "UP 1/2", ...).
server_status() {
  curl -sf --max-time 2 "http://$stats/stats;csv" | awk -F, -v s="$1" '$1 == "faasd" && $2 == s {print $18}'
}

# Whether process $1 has exited (a zombie, or gone).
exited() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ ${stat%% *} == Z ]]
}

wait_status() { # server, status, seconds
  local deadline=$(($(now_ms) + $3 * 1000))
  until [[ "$(server_status "$1")" == "$2" ]]; do
    (($(now_ms) < deadline)) || die "HAProxy did not mark $1 $2 within $3 s (it says: $(server_status "$1"))"
    sleep 0.02
  done
}

# `ab` through HAProxy: $1 requests, output to $2. -r: a reset is counted, not fatal;
# -l: lengths are not compared (a 503's would count twice, as failed and non-2xx).
load() {
  timeout 300 ab -r -l -n "$1" -c "$concurrency" -s 30 "http://$lb/function/hello/" >"$2" 2>&1 || true
}

ab_field() { # file, label: the number after "label:", 0 if absent
  awk -F: -v l="$2" '$1 == l {gsub(/ /, "", $2); print $2; f=1} END {if (!f) print 0}' "$1"
}

# The successes of ab run $1, as the client saw them.
ab_ok() {
  echo $(($(ab_field "$1" "Complete requests") - $(ab_field "$1" "Failed requests") - $(ab_field "$1" "Non-2xx responses")))
}

# HAProxy's log lines (see log-format) from line $1 on:
# "req ACCEPT_MS SERVER STATUS RETRIES TERMINATION".
log_since() { tail -n "+$1" "$work/haproxy.log" | awk '$1 == "req"'; }
log_lines() { wc -l <"$work/haproxy.log"; }
# Requests HAProxy has logged for the nodes so far (one process: it is polled).
logged() { grep -cE '^req [0-9]+ node[ab] ' "$work/haproxy.log" || true; }
# HAProxy's counter $2 (a column of its stats CSV, by name) for server $1: exact, where
# its log may drop a line (the VM's lost one request in 200).
counter() {
  curl -sf --max-time 2 "http://$stats/stats;csv" | awk -F, -v s="$1" -v f="$2" '
    NR == 1 {for (i = 1; i <= NF; i++) if ($i == f) col = i}
    $1 == "faasd" && $2 == s {print $col}'
}

# --- the run ---------------------------------------------------------------------------

ip link set lo up
ip link add br0 type bridge
ip addr add "$bridge_ip/24" dev br0
ip link set br0 up
for n in "${nodes[@]}"; do make_node_netns "$n"; done
for n in "${nodes[@]}"; do start_node "$n"; done
cat >"$work/functions.toml" <<EOF
[functions.hello]
file = "$image"
timeout = 10
EOF
for n in "${nodes[@]}"; do apply_functions "$n"; done

cat >"$work/haproxy.cfg" <<EOF
global
    log stdout format raw local0
    maxconn 512

defaults
    mode http
    log global
    log-format "req %Ts%ms %s %ST %rc %ts"
    # faasd serves one request per connection (each goes to a fresh container).
    option http-server-close
    timeout connect 1s
    # A check's connect is bounded by min(connect, inter), so a dead node is seen at
    # once; its answer may take longer on a loaded machine without a DOWN.
    timeout check 2s
    timeout client 30s
    timeout server 30s
    # What a node's death does to a request: refused connections (nothing listens any
    # more) and connections closed without an answer (in its accept queue or being
    # routed when it died). Retried on another node (redispatch on every retry), GET and
    # HEAD only: a retried request may have run once already.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend functions
    bind $lb
    default_backend faasd

backend faasd
    balance roundrobin
    http-request disable-l7-retry unless METH_GET || METH_HEAD
    option httpchk GET /healthz
    # Each change of a check's result in the log, with its reason and duration.
    option log-health-checks
    http-check expect status 200
    default-server check inter 100ms fall 2 rise 2
    server nodea ${node_ip[a]}:8081
    server nodeb ${node_ip[b]}:8081

frontend stats
    bind $stats
    stats enable
    stats uri /stats
EOF
haproxy -c -q -f "$work/haproxy.cfg" || die "haproxy refused its configuration"
haproxy -db -f "$work/haproxy.cfg" </dev/null >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
started_pids+=("$!")
for _ in $(seq 100); do server_status nodea >/dev/null 2>&1 && break; sleep 0.05; done
wait_status nodea UP 10
wait_status nodeb UP 10

echo "two-node: nodes a (${node_ip[a]}) and b (${node_ip[b]}) up behind HAProxy at $lb"

# 1. Both nodes serving.
mark=$(($(log_lines) + 1))
a0=$(counter nodea hrsp_2xx) b0=$(counter nodeb hrsp_2xx)
start=$(now_ms)
load "$requests" "$work/ab-1.txt"
took1=$(($(now_ms) - start))
ok1=$(ab_ok "$work/ab-1.txt")
served1_a=$(served a)
served1_b=$(served b)
lb1_a=$(($(counter nodea hrsp_2xx) - a0))
lb1_b=$(($(counter nodeb hrsp_2xx) - b0))
echo "two-node: 1. $ok1 of $requests succeeded in $took1 ms; node a served $served1_a, node b $served1_b (HAProxy: $lb1_a and $lb1_b)"

# 2. Node a SIGKILLed once a third of the next run has been answered.
mark=$(($(log_lines) + 1))
a0=$(counter nodea hrsp_2xx) b0=$(counter nodeb hrsp_2xx)
start=$(now_ms)
load "$requests" "$work/ab-2.txt" &
ab_pid=$!
before=$(logged)
until (($(logged) - before >= requests / 3)); do
  kill -0 "$ab_pid" 2>/dev/null || die "the load ended before the kill"
  sleep 0.01
done
answered_at_kill=$(($(logged) - before))
echo "two-node: SIGKILL to node a's faasd (pid ${pid[a]}) after $answered_at_kill answers"
kill -KILL "${pid[a]}"
killed_at=$(now_ms)
# Until HAProxy marks node a DOWN, when (ms after the kill) the faasd had exited (a
# zombie: its sockets are closed, its listener refuses) and HAProxy saw a check fail.
exited_ms= first_fail_ms=
while :; do
  t=$(($(now_ms) - killed_at))
  [[ -z $exited_ms ]] && exited "${pid[a]}" && exited_ms=$t
  st=$(server_status nodea)
  [[ -z $first_fail_ms && $st != UP ]] && first_fail_ms=$t
  [[ $st == DOWN ]] && break
  ((t < 30000)) || die "HAProxy did not mark nodea DOWN within 30 s (it says: $st)"
  sleep 0.02
done
down_ms=$(($(now_ms) - killed_at))
wait "${pid[a]}" 2>/dev/null || true
exited_ms=${exited_ms:-$(($(now_ms) - killed_at))}
pid[a]=
wait "$ab_pid"
took2=$(($(now_ms) - start))
ok2=$(ab_ok "$work/ab-2.txt")
failed2=$((requests - ok2))
served2_b=$(($(served b) - served1_b))
lb2_a=$(($(counter nodea hrsp_2xx) - a0))
lb2_b=$(($(counter nodeb hrsp_2xx) - b0))
# Requests HAProxy sent to node a after the kill: those that needed a retry.
retried=$(log_since "$mark" | awk '$5 != "0"' | wc -l)
last_retry_ms=$(log_since "$mark" | awk -v k="$killed_at" '$5 != "0" && $2 - k > m {m = $2 - k} END {print m + 0}')
echo "two-node: 2. $ok2 of $requests succeeded in $took2 ms ($failed2 failed); node a killed after $answered_at_kill answers,"
echo "two-node:    after the kill: faasd exited at $exited_ms ms, HAProxy's first failed check at $first_fail_ms ms, DOWN at $down_ms ms;"
echo "two-node:    node a served $lb2_a, node b $lb2_b (its faasd counted $served2_b);"
echo "two-node:    $retried requests retried on node b, the last accepted $last_retry_ms ms after the kill"
# The requests of this run HAProxy did not log as a 200 that ended normally (at most 5).
log_since "$mark" | awk '$3 != "<STATS>" && !($4 == 200 && $6 == "--")' | head -5 |
  sed 's/^/two-node:    not a clean 200: /'
# HAProxy's own words on node a's checks since the run began (each message is in its log
# twice: with and without a prefix).
tail -n "+$mark" "$work/haproxy.log" | grep -E '^Health check for server faasd/nodea failed' |
  sed 's/^/two-node:    HAProxy: /'

# 3. Node a back: its faasd on the same state dir recovers and restores the function.
start_node a
back=$(now_ms)
wait_status nodea UP 30
up_ms=$(($(now_ms) - back))
third=$((requests / 10))
load "$third" "$work/ab-3.txt"
ok3=$(ab_ok "$work/ab-3.txt")
served3_a=$(served a)
echo "two-node: 3. node a restarted: UP after $up_ms ms, then $ok3 of $third succeeded, node a served $served3_a"

# Teardown, checked: each process gone, no cgroup parent in any hierarchy.
kill -TERM "$haproxy_pid" "${pid[a]}" "${pid[b]}"
for p in "$haproxy_pid" "${pid[a]}" "${pid[b]}"; do wait "$p" 2>/dev/null || true; done
haproxy_pid=
pid=()
failures=()
for p in "${started_pids[@]}"; do
  ! kill -0 "$p" 2>/dev/null || failures+=("process $p still runs after the stop")
done
for n in "${nodes[@]}"; do
  left=$(cgroup_dirs "$cgroup_prefix-$n")
  [ -z "$left" ] || failures+=("node $n's cgroup parent left: $left")
done

cat <<EOF
two-node: requests=$requests
two-node: ok1=$ok1
two-node: served1_a=$served1_a
two-node: served1_b=$served1_b
two-node: ok2=$ok2
two-node: answered_at_kill=$answered_at_kill
two-node: failed2=$failed2
two-node: lb2_a=$lb2_a
two-node: lb2_b=$lb2_b
two-node: served2_b=$served2_b
two-node: retried=$retried
two-node: down_ms=$down_ms
two-node: exited_ms=$exited_ms
two-node: first_fail_ms=$first_fail_ms
two-node: last_retry_ms=$last_retry_ms
two-node: ok3=$ok3
two-node: served3_a=$served3_a
two-node: pids=${started_pids[*]}
two-node: cgroups=$cgroup_prefix-a $cgroup_prefix-b
EOF

((ok1 == requests)) || failures+=("run 1: $ok1 of $requests succeeded")
((served1_a > 0 && served1_b > 0)) || failures+=("run 1 was not spread: a $served1_a, b $served1_b")
((ok2 == requests)) || failures+=("run 2 (node a killed): $failed2 of $requests failed")
((ok3 == third && served3_a > 0)) || failures+=("run 3 (node a back): $ok3 of $third, node a served $served3_a")
for f in "${failures[@]}"; do echo "two-node: FAILED: $f" >&2; done
((${#failures[@]} == 0))
