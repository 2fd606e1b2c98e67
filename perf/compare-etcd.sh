#!/usr/bin/env bash
# kahuna vs etcd, side by side, driven by the same `kahuna bench` client code. The etcd side
# runs perf/etcd-bench: the same harness source files with the etcd driver, built on its own
# so RocksDB is not recompiled (a `cargo build --release --features etcd` kahuna does the
# same and can be used instead: ETCD_BENCH_BIN="target/release/kahuna bench"). Starts a 3-member etcd 3.4 cluster (Debian's
# etcd-server; fsync on) and a 3-node kahuna cluster (64 partitions, RocksDB, synced batches)
# on loopback, each member with its own data directory, and runs the same put workload
# against both at 1, 16, 64 and 256 clients: 256-byte values over 100,000 keys (uniform).
#
#   perf/compare-etcd.sh [DURATION] [WARMUP]      (default 10s and 3s per run; SETTLE=3 s of
#   quiet before each run, so neither system is measured during the other's writeback)
#
# Needs: protoc (protobuf-compiler) to build, etcd and etcdctl (etcd-server, etcd-client).
# Ports: BASE (default 22600) and up. Both clusters run throughout, so each run shares the
# machine with the other system's idle cluster; on a 2-core machine the client threads also
# share the cores with the servers (said in the output).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
WARMUP=${2:-3s}
CLIENT_COUNTS=${CLIENT_COUNTS:-"1 16 64 256"}
BASE=${BASE:-22600}
BIN=${KAHUNA_BIN:-target/release/kahuna}
ETCD_BENCH=${ETCD_BENCH_BIN:-perf/etcd-bench/target/release/kahuna-etcd-bench}
command -v etcd >/dev/null || { echo "needs etcd: apt-get install -y etcd-server etcd-client" >&2; exit 2; }
[ -n "${KAHUNA_BIN:-}" ] || cargo build --release --bin kahuna
[ -n "${ETCD_BENCH_BIN:-}" ] || (cd perf/etcd-bench && cargo build --release)
. perf/lib-cluster.sh
start_etcd
start_kahuna 64
echo "# $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -r)"
echo "# etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members; kahuna 3 nodes x 1 core, 64 partitions, unpinned; all on this machine"
echo "# clients: kahuna 1 pipelined connection per node shared by all clients; etcd min(clients, 8) gRPC channels"
echo "# puts, 256 B values, 100000 keys, uniform, closed loop, $WARMUP warmup + $DURATION measured per run"
SETTLE=${SETTLE:-3}
run() { # system endpoints clients -> summary line
  # Both clusters share the machine and its disk: let the previous run's writeback and
  # background work (etcd's backend commits, RocksDB flushes) settle before measuring.
  sleep "$SETTLE"
  local connections=1 harness="$BIN bench"
  if [ "$1" = etcd ]; then
    harness=$ETCD_BENCH; connections=$3; [ "$connections" -gt 8 ] && connections=8
  fi
  $harness --target "$1" --endpoints "$2" --workload put --clients "$3" --connections "$connections" \
    --duration "$DURATION" --warmup "$WARMUP" --value-size 256 --keys 100000 2>>"$WORK/bench.log" | grep '^ops='
}
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1==k {print $2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
printf "%8s | %12s %9s %9s %6s | %12s %9s %9s %6s | %8s %8s %8s\n" clients \
  "etcd ops/s" "p50 us" "p99 us" errors "kahuna ops/s" "p50 us" "p99 us" errors \
  "ops x" "p50 x" "p99 x"
for clients in $CLIENT_COUNTS; do
  e=$(run etcd "$(etcd_endpoints)" "$clients")
  k=$(run kahuna "$(kahuna_endpoints)" "$clients")
  printf "%8s | %12s %9s %9s %6s | %12s %9s %9s %6s | %8s %8s %8s\n" "$clients" \
    "$(field "$e" ops_per_s)" "$(field "$e" p50_us)" "$(field "$e" p99_us)" "$(field "$e" errors)" \
    "$(field "$k" ops_per_s)" "$(field "$k" p50_us)" "$(field "$k" p99_us)" "$(field "$k" errors)" \
    "$(ratio "$(field "$k" ops_per_s)" "$(field "$e" ops_per_s)")" \
    "$(ratio "$(field "$k" p50_us)" "$(field "$e" p50_us)")" \
    "$(ratio "$(field "$k" p99_us)" "$(field "$e" p99_us)")"
done
echo "# ratios are kahuna/etcd: ops x > 1 is kahuna faster; p50 x and p99 x < 1 is kahuna lower"
grep -h "errors=[1-9]" "$WORK/bench.log" | tail -5 || true
