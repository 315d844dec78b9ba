#!/usr/bin/env bash
# Memory over a long run on Redis: a producer emits events in batches for
# SECONDS (default 600) while `runnel run` handles them with the no-op
# plugin; prints the host's resident memory after warm-up and at the end.
# Usage: scripts/soak.sh [SECONDS] [REDIS_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
url="${2:-redis://127.0.0.1:6379}"
scripts/build-plugins.sh >/dev/null
cargo build --release -p runnel >/dev/null 2>&1
runnel="${CARGO_TARGET_DIR:-target}/release/runnel"
work=$(mktemp -d)
stream="soak-$$"
cat > "$work/runnel.toml" <<TOML
[backend]
kind = "redis"
url = "$url"
max_len = 100000

[[plugin]]
name = "noop"
path = "$PWD/plugins/target/wasm32-wasip2/release/noop.wasm"
streams = ["$stream"]
TOML
for i in $(seq 1000); do
  echo "{\"name\":\"order.created\",\"payload\":{\"order_id\":\"o-$i\",\"sku\":\"A\",\"quantity\":1,\"unit_cents\":100}}"
done > "$work/batch.ndjson"

RUNNEL_LOG=warn "$runnel" run --config "$work/runnel.toml" > "$work/summary.txt" &
host=$!
rss() { awk '/VmRSS/ {print $2}' "/proc/$host/status"; }
end=$((SECONDS + seconds))
warm=$((SECONDS + 30))
start_rss=""
batches=0
while [ "$SECONDS" -lt "$end" ]; do
  "$runnel" emit --redis "$url" --stream "$stream" < "$work/batch.ndjson" >/dev/null
  batches=$((batches + 1))
  if [ -z "$start_rss" ] && [ "$SECONDS" -ge "$warm" ]; then start_rss=$(rss); fi
  sleep 0.05
done
end_rss=$(rss)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$host/status")
kill -TERM "$host"; wait "$host" || true
echo "soak: ${seconds}s, $((batches * 1000)) events emitted"
echo "resident memory: ${start_rss:-?} KiB after 30 s warm-up, ${end_rss} KiB at the end, peak ${peak} KiB"
cat "$work/summary.txt"
# Whatever the summary does not count must still be on the stream: entries
# emitted after the last read before SIGTERM (unread, "lag") or taken and not
# acknowledged ("pending"); emitted = handled + lag + pending means no loss.
redis-cli -u "$url" --no-raw xinfo groups "$stream" |
  awk '/"pending"/ {getline; p=$NF} /"lag"/ {getline; l=$NF} END {print "left on the stream for the group: pending " p ", unread (lag) " l}'
redis-cli -u "$url" del "$stream" >/dev/null || true
rm -rf "$work"
