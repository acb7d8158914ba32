#!/usr/bin/env bash
# A multi-host lab on one Linux machine: Redis, management servers and agents each in a network
# namespace of their own, with their own address on a private bridge (needs root and iproute2).
#
#   deploy/netns-lab.sh up   [--servers 3] [--agents 3] [--dir DIR] [--prefix P] [--subnet 10.77.0]
#   deploy/netns-lab.sh down [--dir DIR] [--prefix P]
#
# Addresses: Redis <subnet>.2, servers <subnet>.11, .12, ..., agents <subnet>.101, .102, ...
# Everything stays inside namespaces this script creates; nothing is routed off the machine.
# Operate it from the Redis namespace, for example:
#   ip netns exec <P>-redis .venv/bin/msctl hosts --redis-url redis://<subnet>.2:6379/0
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${LAB_BIN:-$here/.venv/bin}
action=${1:-}
shift || true
servers=3 agents=3 dir=/tmp/netns-lab prefix=iallb subnet=10.77.0
while [ $# -gt 0 ]; do
    case "$1" in
        --servers) servers=$2; shift 2 ;;
        --agents) agents=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --subnet) subnet=$2; shift 2 ;;
        *) echo "netns-lab: unknown option $1" >&2; exit 2 ;;
    esac
done
[ ${#prefix} -le 8 ] || { echo "netns-lab: --prefix is at most 8 characters" >&2; exit 2; }

hub="$prefix-hub"

# host NAME ADDRESS: a namespace plugged into the hub's bridge with ADDRESS/24
add_host() {
    local name=$1 address=$2 ns="$prefix-$1"
    ip netns add "$ns"
    ip link add "$prefix$name" type veth peer name "h$prefix$name"
    ip link set "$prefix$name" netns "$ns"
    ip link set "h$prefix$name" netns "$hub"
    ip -n "$hub" link set "h$prefix$name" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$address/24" dev "$prefix$name"
    ip -n "$ns" link set "$prefix$name" up
}

# run NAME LOG COMMAND...: start COMMAND inside host NAME, remember its pid
run_in() {
    local name=$1 log=$2
    shift 2
    ip netns exec "$prefix-$name" "$@" >"$log" 2>&1 &
    echo $! >>"$dir/pids"
}

wait_port() {  # wait_port NAME ADDRESS PORT: until something listens there (max 15 s)
    for _ in $(seq 150); do
        if ip netns exec "$prefix-$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "netns-lab: nothing listens on $2:$3 in $1" >&2
    return 1
}

up() {
    mkdir -p "$dir"
    : >"$dir/pids"
    ip netns add "$hub"
    ip -n "$hub" link add br0 type bridge
    ip -n "$hub" link set br0 up
    add_host redis "$subnet.2"
    run_in redis "$dir/redis.log" redis-server --bind "$subnet.2" --port 6379 --save "" \
        --appendonly no --dir "$dir" --protected-mode no
    wait_port redis "$subnet.2" 6379
    local url="redis://$subnet.2:6379/0" list=""
    for i in $(seq "$servers"); do
        add_host "ms$i" "$subnet.$((10 + i))"
        run_in "ms$i" "$dir/ms$i.log" "$bin/msrv" serve --listen "$subnet.$((10 + i)):8250" \
            --id "ms$i" --redis-url "$url"
        list="$list${list:+,}$subnet.$((10 + i))"
    done
    for i in $(seq "$servers"); do wait_port "ms$i" "$subnet.$((10 + i))" 8250; done
    ip netns exec "$prefix-redis" "$bin/msctl" config set host "$list" --redis-url "$url"
    # one join token for the lab's agents: each enrolls with it at start (a use each)
    local token
    token=$(ip netns exec "$prefix-redis" "$bin/msctl" token create --uses "$agents" --ttl 1h \
        --redis-url "$url")
    for i in $(seq "$agents"); do
        add_host "ag$i" "$subnet.$((100 + i))"
        mkdir -p "$dir/ag$i"
        (umask 077 && printf 'host=%s\nname=ag%s\nzone=zone1\ntoken=%s\n' "$list" "$i" "$token" \
            >"$dir/ag$i/agent.properties")
        run_in "ag$i" "$dir/ag$i.log" "$bin/agentd" run --properties "$dir/ag$i/agent.properties"
    done
    echo "netns-lab: up; redis $url, servers $list, $agents agents; logs in $dir"
}

down() {
    if [ -f "$dir/pids" ]; then
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$dir/pids"
        sleep 0.5
        while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$dir/pids"
        rm -f "$dir/pids"
    fi
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^$prefix-" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns"
    done
    echo "netns-lab: down"
}

case "$action" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down [options]" >&2; exit 2 ;;
esac
