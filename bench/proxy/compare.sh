#!/usr/bin/env bash
# Side-by-side HTTP comparison: the node directly, through steadfast's
# examples/proxy, and through Optimism's proxyd and eRPC when they can be
# built. Interleaved rounds (every target once per round, in turn), medians
# over rounds, throughput as a ratio of direct.
#
#   bench/proxy/compare.sh [ROUNDS]        # default 3 rounds, 3 s per run
#
# Upstream: geth --dev when GETH=/path/to/geth is set (install it with
# examples/proxy/scripts/geth-e2e.sh), else the example's fake node.
# Peers are built from their source modules at pinned versions through the
# Go module proxy; a peer that cannot be built is reported and skipped.
# BASELINE=/path/to/proxy adds another build of examples/proxy (an older
# commit, say) as target "baseline", for before/after numbers. Target
# "relay" is a bare TCP relay (cmd/tcprelay): the floor that any proxy in a
# process of its own pays for the extra hop. KINDS and CONCS narrow the
# runs (defaults: all three kinds at 1, 16 and 64 clients).
# Results: one line per run in $OUT (default /tmp/steadfast-proxy-compare),
# then a summary table.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-3}"
dur="${DUR:-3s}"
out="${OUT:-/tmp/steadfast-proxy-compare}"
PROXYD_MODULE="github.com/ethereum-optimism/infra/proxyd/cmd/proxyd@v4.30.0"
ERPC_MODULE="github.com/erpc/erpc/cmd/erpc-server@v0.0.63"
mkdir -p "$out/bin"
: > "$out/runs.txt"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "== building"
go build -o "$out/bin/steadfast-proxy" ./examples/proxy
(cd bench && go build -o "$out/bin/fakenode" ./proxy/cmd/fakenode && go build -o "$out/bin/rpcload" ./proxy/cmd/rpcload &&
	go build -o "$out/bin/tcprelay" ./proxy/cmd/tcprelay)
peers=()
for m in "$PROXYD_MODULE" "$ERPC_MODULE"; do
	name="$(basename "${m%@*}")"
	if GOBIN="$out/bin" go install "$m" >"$out/$name.build.txt" 2>&1; then
		peers+=("$name")
	else
		echo "   $name not built ($m): $(head -c 300 "$out/$name.build.txt" | tr '\n' ' ')"
	fi
done

wait_up() { # URL: until it answers eth_blockNumber, at most 20 s
	for _ in $(seq 200); do
		"$out/bin/rpcload" -url "$1" -c 1 -d 50ms >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "$1 never answered" >&2
	return 1
}
node_http=http://127.0.0.1:18545
node_ws=ws://127.0.0.1:18545
maxblock=10000
if [ -n "${GETH:-}" ]; then
	# A chain of $maxblock blocks for the varying reads: geth --dev with
	# --dev.period 0 seals a block per transaction, so rpcload -mine sends
	# that many; then the same datadir is served with a block a second.
	maxblock="${GETH_BLOCKS:-2000}"
	geth_run() { # PERIOD
		"$GETH" --dev --dev.period "$1" --datadir "$out/geth" --http --http.addr 127.0.0.1 --http.port 18545 \
			--ws --ws.addr 127.0.0.1 --ws.port 18547 --http.api eth,net,web3 --ws.api eth,net,web3 \
			--port 0 --nodiscover --verbosity 1 &
		geth_pid=$!
		pids+=($geth_pid)
	}
	rm -rf "$out/geth"
	geth_run 0
	wait_up "$node_http"
	echo "== mining $maxblock blocks"
	"$out/bin/rpcload" -url "$node_http" -mine "$maxblock"
	kill "$geth_pid" && wait "$geth_pid" || true
	geth_run 1
	node_ws=ws://127.0.0.1:18547
else
	"$out/bin/fakenode" -listen 127.0.0.1:18545 -blocks "$maxblock" &
	pids+=($!)
fi
wait_up "$node_http"
# -cache-bytes 0: the varying reads measure forwarding, not the cache
# (geth --dev finalizes blocks 16 behind its head, which the cache would
# serve); eth_blockNumber and "latest" never touch that cache anyway.
"$out/bin/steadfast-proxy" -listen 127.0.0.1:18546 -upstream "node=$node_http,$node_ws" -cache-bytes 0 -log-level warn &
pids+=($!)
"$out/bin/tcprelay" -listen 127.0.0.1:18551 -to "${node_http#http://}" &
pids+=($!)
declare -A url=([direct]="$node_http" [relay]=http://127.0.0.1:18551 [steadfast]=http://127.0.0.1:18546)
if [ -n "${BASELINE:-}" ]; then # another build of the proxy, e.g. an older commit, as "baseline"
	"$BASELINE" -listen 127.0.0.1:18550 -upstream "node=$node_http,$node_ws" -cache-bytes 0 -log-level warn &
	pids+=($!)
	url[baseline]=http://127.0.0.1:18550
fi
for p in "${peers[@]}"; do
	case "$p" in
	proxyd)
		cat >"$out/proxyd.toml" <<TOML
[server]
rpc_port = 18548
[backends]
[backends.node]
rpc_url = "$node_http"
ws_url = "$node_ws"
[backend_groups]
[backend_groups.main]
backends = ["node"]
[rpc_method_mappings]
eth_blockNumber = "main"
eth_getBlockByNumber = "main"
eth_chainId = "main"
TOML
		"$out/bin/proxyd" "$out/proxyd.toml" & pids+=($!)
		url[proxyd]=http://127.0.0.1:18548 ;;
	erpc-server)
		cat >"$out/erpc.yaml" <<YAML
logLevel: warn
server:
  httpPortV4: 18549
projects:
  - id: main
    upstreams:
      - endpoint: $node_http
YAML
		(cd "$out" && "$out/bin/erpc-server" ./erpc.yaml) & pids+=($!)
		url[erpc]=http://127.0.0.1:18549/main/evm/1337 ;;
	esac
done
targets=(direct relay steadfast)
for p in baseline proxyd erpc; do [ -n "${url[$p]:-}" ] && targets+=("$p"); done

for t in "${targets[@]}"; do wait_up "${url[$t]}"; done

echo "== $rounds rounds of $dur per run: ${targets[*]}"
for r in $(seq "$rounds"); do
	for kind in ${KINDS:-blockNumber latestBlock varyingBlocks}; do
		for c in ${CONCS:-1 16 64}; do
			for t in "${targets[@]}"; do
				res="$("$out/bin/rpcload" -url "${url[$t]}" -c "$c" -d "$dur" -kind "$kind" -max-block "$maxblock" || true)"
				echo "$r $kind $c $t $res" | tee -a "$out/runs.txt"
			done
		done
	done
done

echo "== medians over $rounds rounds (ratio: throughput / direct's)"
awk '
function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }; return a[int((n + 1) / 2)] }
{ split($5, x, "="); split($6, y, "="); k = $2 " c=" $3 " " $4; n[k]++; rps[k, n[k]] = x[2]; p50[k, n[k]] = y[2]; keys[k] = 1; base[$2 " c=" $3] = 1 }
END {
	for (b in base) {
		kd = b " direct"; for (i = 1; i <= n[kd]; i++) t1[i] = rps[kd, i]; d = med(t1, n[kd])
		for (k in keys) if (index(k, b " ") == 1) {
			split(k, parts, " "); m = n[k]
			for (i = 1; i <= m; i++) { r1[i] = rps[k, i]; l1[i] = p50[k, i] }
			v = med(r1, m); l = med(l1, m)
			printf "%-22s %-10s %9.0f %7.2f %8d\n", b, parts[3], v, (d > 0 ? v / d : 0), l
		}
	}
}' "$out/runs.txt" | sort >"$out/summary.txt"
printf "%-22s %-10s %9s %7s %8s\n" case target req/s ratio "p50 µs"
cat "$out/summary.txt"
