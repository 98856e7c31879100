#!/usr/bin/env bash
# A 3-node NATS cluster with JetStream on loopback, as plain processes: the same topology as
# docker-compose.yml, for machines without Docker. The test harness uses `config` to write the
# node configs (with ports it picked) and runs the servers itself.
#
#   deploy/nats-cluster.sh config DIR   write DIR/n1.conf .. DIR/n3.conf
#   deploy/nats-cluster.sh start  [DIR] write configs if missing, start the nodes in the background
#   deploy/nats-cluster.sh stop   [DIR] stop the hosts and nodes started by `hosts` and `start`
#   deploy/nats-cluster.sh hosts N [DIR] start N jetwasm hosts on the cluster, with the
#                                  production config (deploy/jetwasm.toml: no overlay, the
#                                  streams keep 3 replicas); host i serves HTTP on 9090+i-1
#
# Ports (space-separated, one per node) come from CLIENT_PORTS (default "4222 4223 4224"),
# CLUSTER_PORTS ("6222 6223 6224") and MONITOR_PORTS ("8222 8223 8224"). NATS_SERVER_BIN
# names the binary (default: nats-server on PATH); JETWASM_BIN the host's (default: jetwasm on
# PATH, else target/debug/jetwasm), JETWASM_CONFIG its config (default deploy/jetwasm.toml).
set -euo pipefail

cmd=${1:-}
dir=${2:-.cluster}
read -r -a client <<<"${CLIENT_PORTS:-4222 4223 4224}"
read -r -a cluster <<<"${CLUSTER_PORTS:-6222 6223 6224}"
read -r -a monitor <<<"${MONITOR_PORTS:-8222 8223 8224}"
bin=${NATS_SERVER_BIN:-nats-server}

write_config() {
  mkdir -p "$dir"
  local abs routes="" i
  abs=$(cd "$dir" && pwd)
  for i in 0 1 2; do routes+="${routes:+, }nats-route://127.0.0.1:${cluster[$i]}"; done
  for i in 0 1 2; do
    cat >"$dir/n$((i + 1)).conf" <<CONF
# Node n$((i + 1)) of the jetwasm loopback cluster (written by deploy/nats-cluster.sh).
server_name: n$((i + 1))
listen: 127.0.0.1:${client[$i]}
http: 127.0.0.1:${monitor[$i]}
jetstream {
  store_dir: "$abs/n$((i + 1))"
  max_memory_store: 256MB
  max_file_store: 4GB
  # sync_interval stays at the default (2 min): with replicas 3 an acknowledged write is on
  # three nodes, so losing it takes all three losing power at once. Set "always" where a
  # single node must survive power loss on its own, at a throughput cost.
}
cluster {
  name: jetwasm
  listen: 127.0.0.1:${cluster[$i]}
  routes: [ $routes ]
}
CONF
  done
}

case "$cmd" in
  config)
    [ -n "${2:-}" ] || { echo "usage: $0 config DIR" >&2; exit 2; }
    write_config
    ;;
  start)
    [ -f "$dir/n1.conf" ] || write_config
    for n in 1 2 3; do
      "$bin" -c "$dir/n$n.conf" >"$dir/n$n.log" 2>&1 &
      echo $! >"$dir/n$n.pid"
    done
    echo "cluster started: nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]} (logs in $dir)"
    ;;
  hosts)
    count=${2:-}
    [[ "$count" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 hosts N [DIR]" >&2; exit 2; }
    dir=${3:-.cluster}
    root=$(cd "$(dirname "$0")/.." && pwd)
    jetwasm=${JETWASM_BIN:-$(command -v jetwasm || echo "$root/${CARGO_TARGET_DIR:-target}/debug/jetwasm")}
    config=${JETWASM_CONFIG:-$root/deploy/jetwasm.toml}
    urls="nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]}"
    mkdir -p "$dir"
    for i in $(seq "$count"); do
      http="127.0.0.1:$((9090 + i - 1))"
      "$jetwasm" run --config "$config" --server "$urls" --http "$http" >"$dir/host$i.log" 2>&1 &
      echo $! >"$dir/host$i.pid"
      echo "host $i started: $config, /metrics on http://$http (log $dir/host$i.log)"
    done
    ;;
  stop)
    for pid in "$dir"/host*.pid; do
      [ -f "$pid" ] || continue
      kill -TERM "$(cat "$pid")" 2>/dev/null || true
      rm -f "$pid"
    done
    for n in 1 2 3; do
      if [ -f "$dir/n$n.pid" ]; then kill "$(cat "$dir/n$n.pid")" 2>/dev/null || true; rm -f "$dir/n$n.pid"; fi
    done
    ;;
  *)
    echo "usage: $0 config DIR | start [DIR] | hosts N [DIR] | stop [DIR]" >&2
    exit 2
    ;;
esac
