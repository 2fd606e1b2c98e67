#!/usr/bin/env bash
# CPU cost per operation: runs a 3-node cluster at a FIXED rate (open loop, below saturation)
# and divides the CPU time the three node processes used (user + system, from /proc) by the
# operations done. On a small shared machine this is steadier than throughput at saturation,
# which moves with whatever else runs; it is the figure to compare when making the write path
# cheaper. The client's own CPU per operation is printed beside it.
#
#   perf/cpu-per-op.sh [RATE] [DURATION_S] [WORKLOAD]     (default 3000 puts/s for 10 s)
#
# TARGET=etcd measures a 3-member etcd 3.4 cluster instead (Debian's etcd-server, fsync on,
# driven by perf/etcd-bench over 8 channels, as perf/compare-etcd.sh does): at one rate both
# systems do the same work, so the ratio of their CPU per operation is what bounds the ratio
# of their throughput when the machine's cores are the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-3000}
DURATION=${2:-10}
WORKLOAD=${3:-put}
BIN=${KAHUNA_BIN:-target/release/kahuna}
TARGET=${TARGET:-kahuna}
BASE=${BASE:-23600}
TICKS=$(getconf CLK_TCK)
[ -x "$BIN" ] || cargo build --release --bin kahuna
. perf/lib-cluster.sh
case "$TARGET" in
  kahuna)
    start_kahuna 64
    ENDPOINTS=$(kahuna_endpoints); HARNESS=("$BIN" bench --target kahuna --connections 1)
    PLACEMENT="3 nodes, 64 partitions" ;;
  etcd)
    ETCD_BENCH=${ETCD_BENCH_BIN:-perf/etcd-bench/target/release/kahuna-etcd-bench}
    [ -x "$ETCD_BENCH" ] || (cd perf/etcd-bench && cargo build --release)
    start_etcd
    ENDPOINTS=$(etcd_endpoints); HARNESS=("$ETCD_BENCH" --target etcd --connections 8)
    PLACEMENT="etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members" ;;
  *) echo "TARGET is kahuna or etcd" >&2; exit 2 ;;
esac
cpu_ticks() { local total=0 pid; for pid in "${CHILD_PIDS[@]}"; do
  total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$total"; }
# Warm up (routes, leaders, caches) outside the measured window.
"${HARNESS[@]}" --endpoints "$ENDPOINTS" --workload "$WORKLOAD" --clients 64 --rate "$RATE" \
  --duration 2s --warmup 0s --value-size 256 --keys 100000 >/dev/null 2>&1
before=$(cpu_ticks)
# The client's CPU: the children's user + system ticks of this shell, before and after.
client_ticks() { awk '{print $16 + $17}' /proc/$$/stat; }
client_before=$(client_ticks)
summary=$("${HARNESS[@]}" --endpoints "$ENDPOINTS" --workload "$WORKLOAD" --clients 64 \
  --rate "$RATE" --duration "${DURATION}s" --warmup 0s --value-size 256 --keys 100000 2>/dev/null | tail -1)
after=$(cpu_ticks)
client_after=$(client_ticks)
ops=$(echo "$summary" | tr ' ' '\n' | awk -F= '$1=="ops" {print $2}')
echo "# $(nproc) cores, $(uname -r); $TARGET: $PLACEMENT; $WORKLOAD at $RATE/s for ${DURATION}s, 64 clients, open loop"
echo "$summary"
awk -v t=$((after - before)) -v c=$((client_after - client_before)) -v hz="$TICKS" -v ops="$ops" \
  -v d="$DURATION" 'BEGIN { cpu = t / hz
  printf "node_cpu_s=%.2f cores_busy=%.2f cpu_us_per_op=%.1f (all three nodes) client_cpu_us_per_op=%.1f\n",
    cpu, cpu / d, 1e6 * cpu / ops, 1e6 * c / hz / ops }'
