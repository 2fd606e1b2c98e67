#!/usr/bin/env bash
# kahuna vs etcd, side by side, driven by the same `kahuna bench` client code. The etcd side
# runs perf/etcd-bench: the same harness source files with the etcd driver, built on its own
# so RocksDB is not recompiled (a `cargo build --release --features etcd` kahuna does the
# same and can be used instead: ETCD_BENCH_BIN="target/release/kahuna bench"). Starts a 3-member etcd 3.4 cluster (Debian's
# etcd-server; fsync on) and a 3-node kahuna cluster (64 partitions, RocksDB, synced batches)
# on loopback, each member with its own data directory, and runs the same put workload
# against both at 1, 16, 64 and 256 clients: 256-byte values over 100,000 keys (uniform).
#
# WORKLOADS (default "put") runs more workloads, one table each, in the order given, on the
# same two clusters: e.g. WORKLOADS="put get mixed". Run put first: there is no separate load
# phase, so a get finds the keys the put runs wrote (all but a few of the 100,000 after the
# first minute of puts) and finds nothing before. Gets are linearizable on both systems
# (etcd's default quorum read; kahuna's ReadIndex at the partition leader); mixed is 50% of
# each (the harness's default --read-pct). The goals in README are for puts.
#
#   perf/compare-etcd.sh [DURATION] [WARMUP]      (default 10s and 3s per run; SETTLE=3 s of
#   quiet before each run, so neither system is measured during the other's writeback)
#
# RUNS=N (default 1) measures each client count N times, the two systems alternating
# (etcd, kahuna, etcd, kahuna, ...), and prints the median of each figure, with the range of
# each system's p50 and ops/s in a second table. On a small shared machine one run's p50 moves
# by 5-10% from run to run; a ratio from medians of alternated runs moves less.
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
WORKLOADS=${WORKLOADS:-put}
for workload in $WORKLOADS; do
  case $workload in put | get | mixed | cas) ;; *)
    echo "WORKLOADS: unknown workload '$workload' (put, get, mixed or cas)" >&2; exit 2 ;; esac
done
RUNS=${RUNS:-1}
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "RUNS must be a number, at least 1" >&2; exit 2; }
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
echo "# 256 B values, 100000 keys, uniform, closed loop, $WARMUP warmup + $DURATION measured per run"
[ "$RUNS" -eq 1 ] || echo "# each figure is the median of $RUNS runs per system, the systems alternating"
SETTLE=${SETTLE:-3}
run() { # system endpoints clients workload -> summary line
  # Both clusters share the machine and its disk: let the previous run's writeback and
  # background work (etcd's backend commits, RocksDB flushes) settle before measuring.
  sleep "$SETTLE"
  local connections=1 harness="$BIN bench"
  if [ "$1" = etcd ]; then
    harness=$ETCD_BENCH; connections=$3; [ "$connections" -gt 8 ] && connections=8
  fi
  $harness --target "$1" --endpoints "$2" --workload "$4" --clients "$3" --connections "$connections" \
    --duration "$DURATION" --warmup "$WARMUP" --value-size 256 --keys 100000 2>>"$WORK/bench.log" | grep '^ops='
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# The median of the figure KEY over summary lines (one per line).
median() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k {print $2}' | sort -g |
  awk '{v[NR]=$1} END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR+1)/2];
    else printf "%g\n", (v[NR/2] + v[NR/2+1]) / 2 }'; }
span() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k {print $2}' | sort -g |
  awk 'NR==1 {lo=$1} {hi=$1} END { if (NR) printf "%s-%s", lo, hi; else print "-" }'; }
for workload in $WORKLOADS; do
  echo
  echo "## workload: $workload"
  printf "%8s | %12s %9s %9s %6s | %12s %9s %9s %6s | %8s %8s %8s\n" clients \
    "etcd ops/s" "p50 us" "p99 us" errors "kahuna ops/s" "p50 us" "p99 us" errors \
    "ops x" "p50 x" "p99 x"
  spans=""
  for clients in $CLIENT_COUNTS; do
    e_all=""; k_all=""
    for _ in $(seq "$RUNS"); do
      e_all="$e_all $(run etcd "$(etcd_endpoints)" "$clients" "$workload")"
      k_all="$k_all $(run kahuna "$(kahuna_endpoints)" "$clients" "$workload")"
    done
    e_ops=$(median "$e_all" ops_per_s); e_p50=$(median "$e_all" p50_us); e_p99=$(median "$e_all" p99_us)
    k_ops=$(median "$k_all" ops_per_s); k_p50=$(median "$k_all" p50_us); k_p99=$(median "$k_all" p99_us)
    printf "%8s | %12s %9s %9s %6s | %12s %9s %9s %6s | %8s %8s %8s\n" "$clients" \
      "$e_ops" "$e_p50" "$e_p99" "$(median "$e_all" errors)" \
      "$k_ops" "$k_p50" "$k_p99" "$(median "$k_all" errors)" \
      "$(ratio "$k_ops" "$e_ops")" "$(ratio "$k_p50" "$e_p50")" "$(ratio "$k_p99" "$e_p99")"
    spans="$spans$(printf "%8s | %19s %15s | %19s %15s" "$clients" \
      "$(span "$e_all" ops_per_s)" "$(span "$e_all" p50_us)" \
      "$(span "$k_all" ops_per_s)" "$(span "$k_all" p50_us)")"$'\n'
  done
  echo "# ratios are kahuna/etcd: ops x > 1 is kahuna faster; p50 x and p99 x < 1 is kahuna lower"
  if [ "$RUNS" -gt 1 ]; then
    echo "# ranges over the $RUNS runs (lowest-highest):"
    printf "%8s | %19s %15s | %19s %15s\n" clients "etcd ops/s" "etcd p50 us" "kahuna ops/s" "kahuna p50 us"
    printf "%s" "$spans"
  fi
done
grep -h "errors=[1-9]" "$WORK/bench.log" | tail -5 || true
