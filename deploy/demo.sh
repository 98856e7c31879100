#!/usr/bin/env bash
# The local demo: a JetStream server with its store under .demo/, deploy/streams.toml applied
# with the dev overlay, and what the server now holds. Run it twice: the second apply finds
# nothing to change. Called by `make demo`, which builds the binaries first.
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
trap 'kill $nats_pid 2>/dev/null; wait $nats_pid 2>/dev/null || true' EXIT
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
