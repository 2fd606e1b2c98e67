#!/usr/bin/env bash
# Per-stage latency of the write path, from the nodes' own Prometheus counters: starts a
# 3-node cluster with --metrics-addr, scrapes every node before and after a `kahuna bench`
# put run, and prints the mean, p50 and p99 of each stage over the run (bucket and sum deltas,
# all nodes and cores together; histogram buckets are 4 per power of two, so the quantiles are
# within ~25%; the means are exact, and unlike quantiles the parts' means add up to the whole's).
#
#   perf/stage-latency.sh [CLIENTS] [DURATION]     (default 64 clients, 10s)
#
# Stages: queue (proposal -> its batch), batch size, storage write+sync (and its split into the
# engine's write+sync and the blocking-pool hand-off, with the hand-off's way there and way
# back), replication (appends
# sent -> commit known), follower (appends received -> durable ack sent), apply (client
# answered from the in-memory apply -> apply batch written), and the whole request.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-64}
DURATION=${2:-10s}
BIN=${KAHUNA_BIN:-target/release/kahuna}
BASE=${BASE:-22400}
[ -x "$BIN" ] || cargo build --release --bin kahuna
. perf/lib-cluster.sh
start_kahuna 64
scrape() { for n in 1 2 3; do curl -s "http://$(kahuna_metrics $n)/metrics" || \
  python3 -c "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://$(kahuna_metrics $n)/metrics').read().decode())"; done; }
scrape >"$WORK/before.txt"
echo "# machine: $(nproc) cores, $(uname -r); 3 nodes unpinned on this machine; $CLIENTS clients, puts of 256 B"
"$BIN" bench --endpoints "$(kahuna_endpoints)" --workload put --clients "$CLIENTS" \
  --duration "$DURATION" --warmup 2s --value-size 256 --keys 100000 2>/dev/null | tail -1
scrape >"$WORK/after.txt"
python3 - "$WORK/before.txt" "$WORK/after.txt" <<'PY'
import re, sys
from collections import defaultdict
def load(path):
    buckets = defaultdict(lambda: defaultdict(float))  # name -> le -> count (summed)
    for line in open(path):
        m = re.match(r'^(kahuna_\w+)_sum\{(.*)\} (\S+)$', line)
        if m:
            name, labels, value = m.groups()
            op = re.search(r'op="([^"]+)"', labels)
            if op: name += "{op=" + op.group(1) + "}"
            buckets[name]['sum'] += float(value)
            continue
        m = re.match(r'^(kahuna_\w+)_bucket\{(.*)\} (\S+)$', line)
        if not m: continue
        name, labels, value = m.groups()
        le = re.search(r'le="([^"]+)"', labels).group(1)
        op = re.search(r'op="([^"]+)"', labels)
        if op: name += "{op=" + op.group(1) + "}"
        buckets[name][float('inf') if le == '+Inf' else float(le)] += float(value)
    return buckets
before, after = load(sys.argv[1]), load(sys.argv[2])
def quantile(cum, q):
    les = sorted(le for le in cum if le != 'sum')
    total = cum[les[-1]]
    if total <= 0: return None
    rank, prev_le, prev = q * total, 0.0, 0.0
    for le in les:
        if cum[le] >= rank:
            if le == float('inf'): return prev_le
            return prev_le + (le - prev_le) * (rank - prev) / max(cum[le] - prev, 1e-9)
        prev_le, prev = le, cum[le]
    return les[-1]
rows = [("queue (proposal -> batch)", "kahuna_write_queue_seconds", 1e6, "us"),
        ("batch size", "kahuna_write_batch_entries", 1, "entries"),
        ("storage write + sync", "kahuna_storage_write_seconds", 1e6, "us"),
        ("  of which engine (write+sync)", "kahuna_storage_engine_seconds", 1e6, "us"),
        ("  of which pool hand-off", "kahuna_storage_handoff_seconds", 1e6, "us"),
        ("    its way there (to a pool thread)", "kahuna_storage_handoff_forward_seconds", 1e6, "us"),
        ("    its way back (to the writer task)", "kahuna_storage_handoff_back_seconds", 1e6, "us"),
        ("replication (sent -> commit)", "kahuna_write_replication_seconds", 1e6, "us"),
        ("follower (received -> acked)", "kahuna_follower_ack_seconds", 1e6, "us"),
        ("  of which before the write", "kahuna_follower_queue_seconds", 1e6, "us"),
        ("apply (answered -> written)", "kahuna_write_apply_seconds", 1e6, "us"),
        ("request, put (node side)", "kahuna_request_seconds{op=put}", 1e6, "us")]
print(f"{'stage':32} {'count':>10} {'mean':>10} {'p50':>10} {'p99':>10}  unit")
for title, name, scale, unit in rows:
    a, b = after.get(name, {}), before.get(name, {})
    delta = {le: a[le] - b.get(le, 0.0) for le in a}
    if not delta:
        print(f"{title:32} {'-':>10}"); continue
    total = delta.pop('sum', None)
    count = delta[float('inf')]
    p50, p99 = quantile(delta, 0.5), quantile(delta, 0.99)
    mean = total / count if total is not None and count > 0 else None
    fmt = lambda v: "-" if v is None else f"{v*scale:.0f}"
    print(f"{title:32} {count:>10.0f} {fmt(mean):>10} {fmt(p50):>10} {fmt(p99):>10}  {unit}")
PY
