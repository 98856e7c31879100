#!/usr/bin/env bash
# The local demo, through `jetwasm up`: a local JetStream (store under .demo/), deploy/streams.toml
# applied with the dev overlay (run the demo twice: the second time nothing needs to change),
# the orders handler and the orders generator running, and a batch of orders sent by hand to
# show processing, retries and dead letters. Called by `make demo`, which builds first.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir="${CARGO_TARGET_DIR:-target}/debug"
port="${DEMO_NATS_PORT:-4222}"
state=.demo
mkdir -p "$state"

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "demo: something already listens on 127.0.0.1:$port; stop it or set DEMO_NATS_PORT" >&2
  exit 1
fi

echo "== jetwasm up --config deploy/jetwasm.dev.toml --data $state (log: $state/jetwasm.log)"
echo "   a local nats-server with JetStream, stream-init with the dev overlay, the orders handler"
echo "   and the orders generator (a timer publisher)"
"$bin_dir/jetwasm" up --config deploy/jetwasm.dev.toml --data "$state" --port "$port" >"$state/jetwasm.log" 2>&1 &
host_pid=$!
trap 'kill $host_pid 2>/dev/null; wait $host_pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  if (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null; then break; fi
  if ! kill -0 "$host_pid" 2>/dev/null; then cat "$state/jetwasm.log" >&2; exit 1; fi
  sleep 0.1
done
grep -E "stream-init|streams up to date|loaded|consumer bound" "$state/jetwasm.log" | sed -E 's/^[^ ]+ +[A-Z]+ +//; s/^/   /'
export NATS_URL="nats://127.0.0.1:$port"

echo
echo "== stream-init plan --file deploy/streams.toml --env dev (the server matches the file)"
"$bin_dir/stream-init" plan --file deploy/streams.toml --env dev

echo
echo "== a batch of orders by hand: valid ones processed, malformed ones dead-lettered, busy ones retried"
"$bin_dir/examples/demo_orders" 40 127.0.0.1:9090
echo
echo "== an order over HTTP, twice with the same Idempotency-Key, then a bad one"
if command -v curl >/dev/null; then
  key="demo-$(date +%s)"
  order='{"id":"o-http-1","customer":"c-7","items":[{"sku":"A1","qty":1}],"total":9.5}'
  for body in "$order" "$order" '{"id":"o-http-2"}'; do
    echo "   curl -X POST localhost:9090/orders -H 'Idempotency-Key: $key' -d '$body'"
    curl -s -X POST localhost:9090/orders -H "Idempotency-Key: $key" -d "$body" -w ' → HTTP %{http_code}\n' | sed 's/^/     /'
  done
else
  echo "   (curl is not installed: skipped)"
fi
echo
echo "== the last dead letters, as the host logged them"
grep -E "dead-lettered" "$state/jetwasm.log" | tail -n 4 | sed -E 's/^[^ ]+ +[A-Z]+ +//; s/^/   /'
echo
echo "Metrics: curl -s http://127.0.0.1:9090/metrics | grep ^jetwasm"
if [ -n "${DEMO_KEEP:-}" ]; then
  echo "Running until Ctrl-C (DEMO_KEEP is set). More orders: NATS_URL=$NATS_URL $bin_dir/examples/demo_orders 10"
  wait "$host_pid"
else
  echo "Stopping (SIGTERM): the host drains, then stops its nats-server. DEMO_KEEP=1 make demo keeps it running."
fi
