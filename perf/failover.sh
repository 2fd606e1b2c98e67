#!/usr/bin/env bash
# Leader failover time after kill -9, measured from the kill to the moment the cluster
# acknowledges a write to a key of the dead leader's partition.
#
#   perf/failover.sh [ROUNDS]     (default 5)
#
# Starts three `kahuna serve` processes (as the playground would), and in each round kills -9
# the node leading the partition of a fresh key, times `kahuna put` of that key (the client
# follows leader hints and retries with 10..200 ms backoff), then restarts the killed node.
# The election timeout is 30 ticks of 10 ms (300 ms); followers of a sleeping (hibernated)
# group first notice the leader's node went silent (node liveness, 30 ticks).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
BIN=${KAHUNA_BIN:-target/release/kahuna}
[ -x "$BIN" ] || cargo build --release --bin kahuna
PARTITIONS=64
BASE=37400
dir=$(mktemp -d)
declare -A PIDS
peer() { echo "127.0.0.1:$((BASE + 1000 + ($1 - 1) * 64))"; }
client() { echo "127.0.0.1:$((BASE + $1 - 1))"; }
start_node() {
  local id=$1 peers="" clients=""
  for n in 1 2 3; do
    clients="$clients${clients:+,}$n=$(client $n)"
    [ "$n" = "$id" ] || peers="$peers${peers:+,}$n=$(peer $n)"
  done
  "$BIN" serve --id "$id" --data-dir "$dir/node-$id" --client-addr "$(client "$id")" \
    --peer-addr "$(peer "$id")" --peers "$peers" --client-addrs "$clients" \
    --partitions $PARTITIONS --pin none 2>>"$dir/node-$id.log" &
  PIDS[$id]=$!
}
cleanup() { for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
for n in 1 2 3; do start_node $n; done
E="$(client 1),$(client 2),$(client 3)"
echo "# machine: $(nproc) cores; $(uname -r); binary $BIN"
"$BIN" put warmup 1 --endpoints "$E" >/dev/null
for round in $(seq 1 "$ROUNDS"); do
  key="failover-$round"
  partition=$("$BIN" partition-of "$key" $PARTITIONS)
  "$BIN" put "$key" before --endpoints "$E" >/dev/null
  sleep 2   # let the partition go quiet (hibernate) before the kill
  leader=""
  for node in 1 2 3; do
    if "$BIN" status --endpoints "$(client $node)" 2>/dev/null | grep -Eq "^partition +$partition Leader"; then leader=$node; fi
  done
  [ -n "$leader" ] || { echo "round $round: no leader found for partition $partition"; continue; }
  start=$(date +%s%N)
  kill -9 "${PIDS[$leader]}"
  "$BIN" put "$key" after --endpoints "$E" >/dev/null
  end=$(date +%s%N)
  echo "round=$round partition=$partition killed_leader=node$leader failover_ms=$(( (end - start) / 1000000 ))"
  wait "${PIDS[$leader]}" 2>/dev/null || true
  start_node "$leader"
  sleep 3
done
