#!/usr/bin/env bash
# CPU flamegraph of one kahuna node under a put workload: starts a 3-node cluster, records
# node 1 with `perf record` (call graphs from frame pointers and DWARF-less stacks: the
# release profile keeps debug line info), runs `kahuna bench` against the cluster, and renders
# perf/out/flamegraph-node1.svg with inferno (`cargo install inferno`; not a project
# dependency).
#
#   perf/flamegraph.sh [CLIENTS] [DURATION]      (default 64 clients, 10s)
#
# Needs: perf (Debian: linux-perf) usable by this user (perf_event_paranoid <= 1, or root).
# In a VM without a hardware PMU perf samples the cpu-clock software event, which is what
# this script asks for, so it works in Firecracker guests too. Fallback when perf is not
# usable: the script says so and exits 2 (use perf/stage-latency.sh for where time goes).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-64}
DURATION=${2:-10s}
BASE=${BASE:-22800}
BIN=${KAHUNA_BIN:-target/release/kahuna}
PATH="$HOME/.cargo/bin:$PATH"
command -v perf >/dev/null || { echo "perf not found: apt-get install -y linux-perf" >&2; exit 2; }
command -v inferno-collapse-perf >/dev/null || { echo "inferno not found: cargo install inferno" >&2; exit 2; }
perf record -e cpu-clock -o /dev/null -- true 2>/dev/null || { echo "perf record is not permitted here (perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid))" >&2; exit 2; }
[ -x "$BIN" ] || cargo build --release --bin kahuna
mkdir -p perf/out
. perf/lib-cluster.sh
start_kahuna 64
node1=${CHILD_PIDS[0]}
perf record -e cpu-clock -F 999 -g -p "$node1" -o "$WORK/perf.data" 2>"$WORK/perf.log" &
perf_pid=$!
"$BIN" bench --endpoints "$(kahuna_endpoints)" --workload put --clients "$CLIENTS" \
  --duration "$DURATION" --warmup 1s --value-size 256 --keys 100000 2>/dev/null | tail -1
kill -INT "$perf_pid"; wait "$perf_pid" || true
perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf > perf/out/node1.folded
inferno-flamegraph --title "kahuna node 1, $CLIENTS clients, puts" < perf/out/node1.folded > perf/out/flamegraph-node1.svg
echo "wrote perf/out/flamegraph-node1.svg ($(wc -l < perf/out/node1.folded) stacks); hottest frames (self time):"
awk '{n=$NF; $NF=""; k=split($0, f, ";"); leaf=f[k]; gsub(/ +$/, "", leaf); self[leaf]+=n; total+=n}
     END {for (l in self) printf "%6.2f%%  %s\n", 100*self[l]/total, l}' perf/out/node1.folded | sort -rn | head -15
