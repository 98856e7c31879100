#!/usr/bin/env bash
# The local demo: a JetStream server with its store under .demo/, deploy/streams.toml applied
# with the dev overlay (run it twice: the second apply finds nothing to change), then the
# jetwasm host running the orders handler while a batch of orders flows through it.
# Called by `make demo`, which builds the binaries and components first.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir="${CARGO_TARGET_DIR:-target}/debug"
nats_server="${NATS_SERVER_BIN:-nats-server}"
port="${DEMO_NATS_PORT:-4222}"
monitor="${DEMO_MONITOR_PORT:-8222}"
state=.demo
mkdir -p "$state"

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "demo: something already listens on 127.0.0.1:$port; stop it or set DEMO_NATS_PORT" >&2
  exit 1
fi

"$nats_server" -js -a 127.0.0.1 -p "$port" -m "$monitor" -sd "$state/jetstream" >"$state/nats.log" 2>&1 &
nats_pid=$!
host_pid=
cleanup() {
  [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null && wait "$host_pid" 2>/dev/null
  kill "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
export NATS_URL="nats://127.0.0.1:$port"
echo "== JetStream on $NATS_URL (store: $state/jetstream, log: $state/nats.log)"

echo "== stream-init apply --file deploy/streams.toml --env dev"
"$bin_dir/stream-init" apply --file deploy/streams.toml --env dev
echo
echo "== stream-init plan --file deploy/streams.toml --env dev (the server now matches the file)"
"$bin_dir/stream-init" plan --file deploy/streams.toml --env dev

echo
echo "== jetwasm run --config deploy/jetwasm.toml (log: $state/jetwasm.log)"
"$bin_dir/jetwasm" run --config deploy/jetwasm.toml >"$state/jetwasm.log" 2>&1 &
host_pid=$!
for _ in $(seq 300); do
  if (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null; then break; fi
  if ! kill -0 "$host_pid" 2>/dev/null; then cat "$state/jetwasm.log" >&2; exit 1; fi
  sleep 0.1
done
grep -E "handler loaded|consumer bound" "$state/jetwasm.log" | sed 's/^/   /'

echo
echo "== orders flowing: valid ones processed, malformed ones dead-lettered, busy ones retried"
"$bin_dir/examples/demo_orders" 40 127.0.0.1:9090
echo
echo "== what the host logged about the failures"
grep -E "dead-lettered" "$state/jetwasm.log" | tail -n 4 | sed 's/^/   /'
echo
echo "Metrics: http://127.0.0.1:9090/metrics (while the host runs). Stopping the host (SIGTERM)."
