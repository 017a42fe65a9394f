#!/usr/bin/env bash
# Multi-host test: one `tm2p2p node` per network namespace, as users run one node per machine.
#
#   sudo scripts/netns-testnet.sh            # builds the release binary first
#   TM2P2P_BIN=target/release/tm2p2p sudo -E scripts/netns-testnet.sh
#
# What it does:
#   1. creates 6 network namespaces (tm2nt-0 .. tm2nt-5) and a hub namespace holding a bridge;
#      each host is joined to the bridge by a veth pair and gets 10.77.0.(i+1)/24;
#   2. impairs the links of hosts 2, 3 and 4 in both directions: host 2 loses 2% and is limited
#      to 1 mbit/s, host 3 loses 5%, host 4 is limited to 512 kbit/s. Where the kernel has
#      sch_netem, `tc netem` applies all of it plus a fixed delay (40 ms +- 10, 80 ms, 20 ms
#      +- 5). A fixed delay needs sch_netem; kernels without it (such as the 6.18 VM this was
#      written on) get no added delay, and the script falls back to random loss with nftables
#      (`numgen random mod 100 < N drop` on the host's bridge port, in the hub) and to rate
#      limits with `tc tbf`, which only delays packets when traffic exceeds the rate (queueing)
#      and drops what overflows its queue. nftables is installed with apt-get when `nft` is
#      missing; without it the links run without loss. At the end it prints what the
#      impairments did to the run's real traffic (nftables drop counters, qdisc statistics);
#   3. generates a home per host (`tm2p2p init`): host 0 is the seed, the others know only the
#      seed (`seeds`); host 1 also lists host 5 as a persistent peer; every node publishes a
#      gossip message every second and serves metrics on its own address;
#   4. checks that the network converges (every node has >= 2 peers, from its metrics);
#   5. cuts host 5 off (link down), checks that host 1 drops it (log: peer disconnected),
#      restores the link and checks that host 1 redials it (log: peer connected again);
#   6. checks that gossip published after the restore reaches every host.
# Hosts 1 and 5 (the redial pair) and host 0 (the seed) stay unimpaired. The PASS line names the
# impairments applied and what applied them. Everything is torn down on exit (the nftables
# table and qdiscs live in the namespaces and go with them). It needs root and iproute2
# (installed with apt-get when missing); where namespaces cannot be created it prints "skipped"
# and exits 0.
set -euo pipefail

HOSTS=6
PREFIX=tm2nt
HUB=${PREFIX}-hub
NET=10.77.0
P2P_PORT=26656
METRICS_PORT=26660
CUT=5          # the host cut off and restored
WATCHER=1      # the host that keeps the cut host as a persistent peer
TIMEOUT=${NETNS_TIMEOUT:-60}   # seconds for each wait

skip() {
    echo "skipped: $*"
    exit 0
}
fail() {
    echo "FAIL: $*" >&2
    for i in $(seq 0 $((HOSTS - 1))); do
        [ -f "$WORK/n$i.log" ] && {
            echo "--- last lines of n$i.log (gossip lines left out)" >&2
            grep -v '"msg":"gossip delivered"' "$WORK/n$i.log" | tail -n 10 >&2
        }
    done
    exit 1
}
step() { echo "==> $*"; }

[ "$(uname -s)" = Linux ] || skip "network namespaces need Linux"
[ "$(id -u)" -eq 0 ] || skip "needs root (run with sudo)"
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    if command -v apt-get >/dev/null; then
        step "installing iproute2"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2) \
            >/dev/null 2>&1 || skip "iproute2 missing and could not be installed"
    else
        skip "iproute2 (ip, tc) missing and no apt-get to install it"
    fi
fi
ip netns add "${PREFIX}-probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "${PREFIX}-probe"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${TM2P2P_BIN:-}
if [ -z "$BIN" ]; then
    step "building tm2p2p (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin tm2p2p)
    BIN=$ROOT/target/release/tm2p2p
fi
[ -x "$BIN" ] || fail "no binary at $BIN"

WORK=$(mktemp -d /tmp/tm2-netns.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for i in $(seq 0 $((HOSTS - 1))); do ip netns del "${PREFIX}-$i" 2>/dev/null || true; done
    ip netns del "$HUB" 2>/dev/null || true
    if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

ns() { local i=$1; shift; ip netns exec "${PREFIX}-$i" "$@"; }
addr_of() { echo "$NET.$(($1 + 1))"; }

step "creating $HOSTS namespaces joined by a bridge"
ip netns add "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
for i in $(seq 0 $((HOSTS - 1))); do
    ip netns add "${PREFIX}-$i"
    ip link add "tm2v$i" type veth peer name "tm2b$i"
    ip link set "tm2v$i" netns "${PREFIX}-$i"
    ip link set "tm2b$i" netns "$HUB"
    ip -n "$HUB" link set "tm2b$i" master br0
    ip -n "$HUB" link set "tm2b$i" up
    ip -n "${PREFIX}-$i" link set lo up
    ip -n "${PREFIX}-$i" link set "tm2v$i" name eth0
    ip -n "${PREFIX}-$i" addr add "$(addr_of "$i")/24" dev eth0
    ip -n "${PREFIX}-$i" link set eth0 up
done

# Impairments. Loss is in percent and the rate is a tc rate; both act in both directions of the
# host's link. Host $CUT (cut off and restored) and host $WATCHER (which redials it) are left
# clean so the drop/redial check measures the node, not the loss.
declare -A LOSS=([2]=2 [3]=5)
declare -A RATE=([2]=1mbit [4]=512kbit)
declare -A DELAY=([2]="40ms 10ms" [3]="80ms" [4]="20ms 5ms")   # used only with netem
IMPAIRED="2 3 4"
IMPAIR_BY=""     # what applied the impairments, for the PASS line
hub() { ip netns exec "$HUB" "$@"; }
# Adds the same root qdisc on both ends of host $1's link: its eth0 (outgoing) and its bridge
# port in the hub (incoming).
qdisc_both() { # host, qdisc and its arguments
    local i=$1; shift
    ns "$i" tc qdisc add dev eth0 root "$@" && hub tc qdisc add dev "tm2b$i" root "$@"
}
describe() { # host: its impairments as one phrase, "" when none was applied
    local i=$1 d=""
    if [ "$IMPAIR_BY" = netem ] && [ -n "${DELAY[$i]:-}" ]; then d+=", delay ${DELAY[$i]}"; fi
    if [ "$HAVE_LOSS" = 1 ] && [ -n "${LOSS[$i]:-}" ]; then d+=", loss ${LOSS[$i]}%"; fi
    if [ "$HAVE_RATE" = 1 ] && [ -n "${RATE[$i]:-}" ]; then d+=", rate ${RATE[$i]}"; fi
    [ -z "$d" ] || echo "host $i ${d#, }"
}
# The nftables ruleset for the hub's bridge: for each lossy host and direction ("out" is
# from the host, "in" is to it), a counter of every frame on its bridge port and a rule that
# drops LOSS percent of them at random, with a counter of the drops. The bridge runs the forward
# hook once per output port, so a flooded frame (ARP broadcast, unknown destination) is counted,
# and may be dropped, once per port it goes to.
nft_rules() {
    local i dir port
    echo "table bridge tm2impair {"
    for i in "${!LOSS[@]}"; do
        for dir in out in; do echo "  counter h${i}_${dir}_all { }"; echo "  counter h${i}_${dir}_drop { }"; done
    done
    echo "  chain forward {"
    echo "    type filter hook forward priority 0; policy accept;"
    for i in "${!LOSS[@]}"; do
        for dir in out in; do
            if [ "$dir" = out ]; then port="iifname \"tm2b$i\""; else port="oifname \"tm2b$i\""; fi
            echo "    $port counter name \"h${i}_${dir}_all\""
            echo "    $port numgen random mod 100 < ${LOSS[$i]} counter name \"h${i}_${dir}_drop\" drop"
        done
    done
    echo "  }"
    echo "}"
}
nft_packets() { # counter name: its packet count
    hub nft list counter bridge tm2impair "$1" | awk '$1 == "packets" { print $2 }'
}
HAVE_LOSS=0
HAVE_RATE=0
if ns 2 tc qdisc add dev eth0 root netem delay 1ms 2>/dev/null; then
    ns 2 tc qdisc del dev eth0 root
    step "adding delay, loss and rate limits with tc netem (both directions of each link)"
    IMPAIR_BY=netem
    HAVE_LOSS=1
    HAVE_RATE=1
    for i in $IMPAIRED; do
        args=()
        [ -z "${DELAY[$i]:-}" ] || read -ra args <<<"delay ${DELAY[$i]}"
        [ -z "${LOSS[$i]:-}" ] || args+=(loss "${LOSS[$i]}%")
        [ -z "${RATE[$i]:-}" ] || args+=(rate "${RATE[$i]}")
        qdisc_both "$i" netem "${args[@]}" || fail "tc netem ${args[*]} on host $i"
        echo "    $(describe "$i")"
    done
else
    # No sch_netem: nothing else in tc can hold packets for a fixed time, so there is no added
    # delay. Random loss comes from nftables in the hub's bridge (a dropped frame vanishes on
    # the "wire", as on a lossy cable; dropping in the host's own output hook would instead
    # fail the sender's write with EPERM), and the rate limit from tbf, which queues packets
    # (delay under load only) and drops what overflows its queue.
    step "adding loss (nftables) and rate limits (tbf): no fixed delay, this kernel has no sch_netem"
    if ! command -v nft >/dev/null && command -v apt-get >/dev/null; then
        echo "    installing nftables"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables) \
            >/dev/null 2>&1 || true
    fi
    if command -v nft >/dev/null; then
        if nft_rules | hub nft -f -; then
            HAVE_LOSS=1
        else
            echo "    nft could not load the loss rules: links run without loss"
        fi
    else
        echo "    nft missing and could not be installed: links run without loss"
    fi
    HAVE_RATE=1
    for i in $IMPAIRED; do
        [ -n "${RATE[$i]:-}" ] || continue
        # burst: a few full-size frames may pass at line speed; latency: how long a packet may
        # wait in the queue before tbf drops it instead.
        if ! qdisc_both "$i" tbf rate "${RATE[$i]}" burst 16kb latency 200ms 2>/dev/null; then
            HAVE_RATE=0
            echo "    tc tbf failed (no sch_tbf?): links run without rate limits"
            break
        fi
    done
    if [ "$HAVE_LOSS" = 1 ] && [ "$HAVE_RATE" = 1 ]; then
        IMPAIR_BY="nftables loss + tbf rate"
    elif [ "$HAVE_LOSS" = 1 ]; then
        IMPAIR_BY="nftables loss"
    elif [ "$HAVE_RATE" = 1 ]; then
        IMPAIR_BY="tbf rate"
    else
        IMPAIR_BY="nothing"
    fi
    for i in $IMPAIRED; do
        line=$(describe "$i")
        [ -z "$line" ] || echo "    $line"
    done
fi
# The impairments as one phrase, for the PASS line.
SUMMARY=""
for i in $IMPAIRED; do
    line=$(describe "$i")
    [ -z "$line" ] || SUMMARY+="; $line"
done
SUMMARY="impaired by $IMPAIR_BY${SUMMARY:+: ${SUMMARY#; }}"
[ "$IMPAIR_BY" = netem ] || SUMMARY+="; no fixed delay (kernel has no sch_netem)"

step "generating homes"
IDS=()
for i in $(seq 0 $((HOSTS - 1))); do
    "$BIN" init --home "$WORK/n$i" >/dev/null
    IDS+=("$("$BIN" show-id --home "$WORK/n$i")")
done
SEED="${IDS[0]}@$(addr_of 0):$P2P_PORT"
for i in $(seq 0 $((HOSTS - 1))); do
    cfg=$WORK/n$i/config.toml
    set_key() { # key value: replaces the key's line (commented out or not)
        sed -i -E "s|^#? *$1 = .*|$1 = $2|" "$cfg"
        grep -q "^$1 = " "$cfg" || echo "$1 = $2" >>"$cfg"
    }
    set_key laddr "\"$(addr_of "$i"):$P2P_PORT\""
    set_key metrics_addr "\"$(addr_of "$i"):$METRICS_PORT\""
    set_key moniker "\"host$i\""
    set_key allow_non_routable true
    set_key pex_interval "\"1s\""
    set_key ping_interval "\"2s\""
    set_key pong_timeout "\"1s\""
    set_key redial_backoff_max "\"3s\""
    if [ "$i" -ne 0 ]; then set_key seeds "[\"$SEED\"]"; fi
    if [ "$i" -eq "$WATCHER" ]; then
        set_key persistent_peers "[\"${IDS[$CUT]}@$(addr_of "$CUT"):$P2P_PORT\"]"
    fi
done

step "starting one node per namespace"
for i in $(seq 0 $((HOSTS - 1))); do
    # `ip netns exec` execs the node, so $! is the node itself (a backgrounded shell function
    # would be a subshell, and killing it would leave the node running).
    ip netns exec "${PREFIX}-$i" "$BIN" node --home "$WORK/n$i" --log-format json \
        --log-level info --publish-every 1s >"$WORK/n$i.out" 2>"$WORK/n$i.log" &
    PIDS+=($!)
done

# Fetches host $1's metrics over HTTP from inside its namespace (bash /dev/tcp: no curl needed).
metrics() {
    local a
    a=$(addr_of "$1")
    ns "$1" timeout 5 bash -c "exec 3<>/dev/tcp/$a/$METRICS_PORT &&
        printf 'GET /metrics HTTP/1.0\r\nHost: $a\r\n\r\n' >&3 && cat <&3" 2>/dev/null || true
}
# The number of connected peers of host $1, from tm2p2p_peers{direction=...}.
peers_of() {
    metrics "$1" | awk '/^tm2p2p_peers\{/ { n += $NF } END { print n + 0 }'
}
# Waits until `$@` succeeds, for at most $TIMEOUT seconds; polling here is the script's only
# way to observe separate processes, and it is bounded.
wait_until() {
    local what=$1; shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.5
    done
}
converged() {
    for i in $(seq 0 $((HOSTS - 1))); do
        [ "$(peers_of "$i")" -ge 2 ] || return 1
    done
}
# Count of log lines of host $1 with message $2 about peer $3.
log_count() {
    grep -F "\"msg\":\"$2\"" "$WORK/n$1.log" 2>/dev/null | grep -cF "\"peer\":\"$3\"" || true
}
# True when host $1 has logged message $2 about peer $3 more than $4 times (re-counted on
# every call, so wait_until can poll it).
logged_more_than() {
    [ "$(log_count "$1" "$2" "$3")" -gt "$4" ]
}

step "waiting for the network to converge (every node >= 2 peers)"
start=$SECONDS
wait_until "convergence" converged
echo "    converged in $((SECONDS - start)) s; peers per host: $(for i in $(seq 0 $((HOSTS - 1))); do printf '%s ' "$(peers_of "$i")"; done)"
wait_until "host $WATCHER to connect to host $CUT" \
    logged_more_than "$WATCHER" "peer connected" "${IDS[$CUT]}" 0
connects_before=$(log_count "$WATCHER" "peer connected" "${IDS[$CUT]}")
drops_before=$(log_count "$WATCHER" "peer disconnected" "${IDS[$CUT]}")

step "cutting host $CUT off (link down)"
ns "$CUT" ip link set eth0 down
wait_until "host $WATCHER to drop host $CUT" \
    logged_more_than "$WATCHER" "peer disconnected" "${IDS[$CUT]}" "$drops_before"
echo "    host $WATCHER dropped host $CUT"

step "restoring host $CUT"
ns "$CUT" ip link set eth0 up
wait_until "host $WATCHER to redial host $CUT" \
    logged_more_than "$WATCHER" "peer connected" "${IDS[$CUT]}" "$connects_before"
echo "    host $WATCHER reconnected to host $CUT"

step "checking that gossip reaches every host"
# A message published by host 0 after the restore must be delivered on every other host.
delivered_from_0() { # host: deliveries of messages from host 0 logged after the marker
    grep -F '"msg":"gossip delivered"' "$WORK/n$1.log" | grep -cF '"text":"host0-' || true
}
declare -A base
for i in $(seq 1 $((HOSTS - 1))); do base[$i]=$(delivered_from_0 "$i"); done
all_got_new() {
    for i in $(seq 1 $((HOSTS - 1))); do
        [ "$(delivered_from_0 "$i")" -gt "${base[$i]}" ] || return 1
    done
}
wait_until "gossip from host 0 at every host" all_got_new
echo "    every host delivered gossip published by host 0 after the restore"

step "stopping nodes"
for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
for pid in "${PIDS[@]}"; do wait "$pid" || fail "a node exited non-zero on SIGINT"; done
PIDS=()

# Proof that the impairments acted on the nodes' real traffic during the run: the drop counters
# of the nftables rules, and the statistics of the qdiscs (netem or tbf) on both ends of a link.
# Overlimits counts the times the qdisc had to hold packets back (tbf: out of tokens).
qdisc_stats() { # "tc -s qdisc show" output: the counters of its root qdisc
    awk '$1 == "Sent" { gsub(/[(),]/, ""); printf "sent %s pkt, dropped %s, overlimits %s", $4, $7, $9; exit }'
}
step "impairments observed during the run (out: frames the host sent; in: frames sent to it)"
loss_seen=0
for i in $IMPAIRED; do
    if [ "$HAVE_LOSS" = 1 ] && [ -n "${LOSS[$i]:-}" ] && [ "$IMPAIR_BY" != netem ]; then
        for dir in out in; do
            all=$(nft_packets "h${i}_${dir}_all")
            dropped=$(nft_packets "h${i}_${dir}_drop")
            loss_seen=$((loss_seen + all))
            echo "    host $i $dir: nftables dropped $dropped of $all frames" \
                "($(awk -v d="$dropped" -v a="$all" 'BEGIN { printf "%.1f", a ? 100 * d / a : 0 }')%," \
                "target ${LOSS[$i]}%)"
        done
    fi
    if [ "$IMPAIR_BY" = netem ] || { [ "$HAVE_RATE" = 1 ] && [ -n "${RATE[$i]:-}" ]; }; then
        kind=tbf
        [ "$IMPAIR_BY" != netem ] || kind=netem
        echo "    host $i out: $kind $(ns "$i" tc -s qdisc show dev eth0 | qdisc_stats)"
        echo "    host $i in: $kind $(hub tc -s qdisc show dev "tm2b$i" | qdisc_stats)"
    fi
done
if [ "$HAVE_LOSS" = 1 ] && [ "$IMPAIR_BY" != netem ] && [ "$loss_seen" -eq 0 ]; then
    fail "the nftables loss rules saw no frames: they do not match the hosts' traffic"
fi
echo "PASS: converged, host $CUT dropped and redialed, gossip reached all $HOSTS hosts ($SUMMARY)"
