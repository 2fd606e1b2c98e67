# Shared by the perf scripts (source it): start a 3-node kahuna cluster or a 3-member etcd
# cluster on loopback, each member with its own data directory under $WORK, and stop them on
# exit. Callers set BASE (client ports BASE..BASE+2, kahuna peers BASE+1000+64*(n-1),
# kahuna metrics BASE+10..BASE+12, etcd client BASE+20.., etcd peer BASE+30..) and BIN.

WORK=${WORK:-$(mktemp -d /tmp/kahuna-perf.XXXXXX)}
declare -a CHILD_PIDS=()
cleanup_children() {
  for pid in "${CHILD_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${CHILD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  CHILD_PIDS=()
}
trap 'cleanup_children; rm -rf "$WORK"' EXIT

kahuna_client() { echo "127.0.0.1:$((BASE + $1 - 1))"; }
kahuna_peer() { echo "127.0.0.1:$((BASE + 1000 + ($1 - 1) * 64))"; }
kahuna_metrics() { echo "127.0.0.1:$((BASE + 10 + $1 - 1))"; }
kahuna_endpoints() { echo "$(kahuna_client 1),$(kahuna_client 2),$(kahuna_client 3)"; }

# start_kahuna PARTITIONS [extra serve flags...]
# KAHUNA_SERVE_FLAGS adds flags to every node's `kahuna serve` in every script (for A/B runs of
# a setting, e.g. KAHUNA_SERVE_FLAGS="--compact-after 1000" perf/cpu-per-op.sh 12000 30).
# KAHUNA_PIN="0 1 0" pins node n (one core each) to the n-th CPU of the list, its reactor and
# its blocking pool both (`--pin`); unset, every node runs unpinned.
start_kahuna() {
  local partitions=$1; shift
  local id peers clients n pin
  local -a pins=(${KAHUNA_PIN:-none none none})
  for id in 1 2 3; do
    pin=${pins[$((id - 1))]:-none}
    peers=""; clients=""
    for n in 1 2 3; do
      clients="$clients${clients:+,}$n=$(kahuna_client $n)"
      [ "$n" = "$id" ] || peers="$peers${peers:+,}$n=$(kahuna_peer $n)"
    done
    "$BIN" serve --id "$id" --data-dir "$WORK/kahuna-$id" --client-addr "$(kahuna_client $id)" \
      --peer-addr "$(kahuna_peer $id)" --peers "$peers" --client-addrs "$clients" \
      --partitions "$partitions" --pin "$pin" --metrics-addr "$(kahuna_metrics $id)" "$@" ${KAHUNA_SERVE_FLAGS:-} \
      2>>"$WORK/kahuna-$id.log" &
    CHILD_PIDS+=($!)
  done
  # Ready once every partition has a leader (the nodes' own status reports).
  local deadline=$((SECONDS + 60)) leaders
  while true; do
    leaders=0
    for id in 1 2 3; do
      leaders=$((leaders + $("$BIN" status --endpoints "$(kahuna_client $id)" 2>/dev/null | grep -c ' Leader ' || true)))
    done
    [ "$leaders" -ge "$partitions" ] && break
    [ $SECONDS -lt $deadline ] || { echo "kahuna cluster did not elect leaders" >&2; tail "$WORK"/kahuna-*.log >&2; exit 1; }
    sleep 0.2
  done
}

etcd_client_url() { echo "http://127.0.0.1:$((BASE + 20 + $1 - 1))"; }
etcd_peer_url() { echo "http://127.0.0.1:$((BASE + 30 + $1 - 1))"; }
etcd_endpoints() { echo "127.0.0.1:$((BASE + 20)),127.0.0.1:$((BASE + 21)),127.0.0.1:$((BASE + 22))"; }

# start_etcd: etcd 3.4 from Debian, 3 members, fsync on (etcd always syncs its WAL; no
# --unsafe-no-fsync), default snapshot settings.
start_etcd() {
  local id cluster=""
  for id in 1 2 3; do cluster="$cluster${cluster:+,}e$id=$(etcd_peer_url $id)"; done
  for id in 1 2 3; do
    etcd --name "e$id" --data-dir "$WORK/etcd-$id" \
      --listen-client-urls "$(etcd_client_url $id)" --advertise-client-urls "$(etcd_client_url $id)" \
      --listen-peer-urls "$(etcd_peer_url $id)" --initial-advertise-peer-urls "$(etcd_peer_url $id)" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token kahuna-perf \
      --log-level error --logger zap 2>>"$WORK/etcd-$id.log" &
    CHILD_PIDS+=($!)
  done
  local deadline=$((SECONDS + 60))
  until ETCDCTL_API=3 etcdctl --endpoints "$(etcd_endpoints)" put ready x >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "etcd cluster did not start" >&2; tail "$WORK"/etcd-*.log >&2; exit 1; }
    sleep 0.2
  done
}
