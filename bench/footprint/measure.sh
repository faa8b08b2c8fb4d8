#!/usr/bin/env bash
# Measures what a `go get` of one steadfast package costs a fresh consumer:
# modules in `go list -m all`, go.sum lines, module cache MB, first build
# seconds (empty module and build caches) and binary size.
#
#   bash bench/footprint/measure.sh [--only NAME] [REPO_DIR]
#
# --only keyedlock measures that one consumer (CI uses it as a guard).
# The steadfast modules of REPO_DIR (default: this checkout) are published
# into a local file module proxy by ./footprint (a zip per module, as a
# tagged release); third-party modules come from the usual module proxy.
# Nothing goes through a replace directive.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
only=""
if [ "${1:-}" = "--only" ]; then
	only=$2
	shift 2
fi
repo="$(cd "${1:-$here/../..}" && pwd)"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

mods=("$repo")
for m in eventlog/sqlitestore eventlog/pgstore keyedlock/pglock; do
	[ -f "$repo/$m/go.mod" ] && mods+=("$repo/$m")
done
(cd "$here/.." && GOWORK=off go run ./footprint -proxy "$work/proxy" -version v0.1.0 "${mods[@]}")

upstream="$(go env GOPROXY)"
consumer() { # name import-path
	local name=$1 pkg=$2 dir="$work/$1"
	[ -z "$only" ] || [ "$only" = "$name" ] || return 0
	mkdir -p "$dir"
	cat >"$dir/main.go" <<GO
package main

import _ "$pkg"

func main() {}
GO
	(
		cd "$dir"
		export GOFLAGS=-mod=mod GOWORK=off GOMODCACHE="$dir/modcache" GOCACHE="$dir/gocache"
		export GOPROXY="file://$work/proxy,$upstream" GONOSUMDB=github.com/steadfast-go GONOSUMCHECK=1 GOFLAGS=-mod=mod
		go mod init example.com/consumer >/dev/null 2>&1
		go get "$pkg@v0.1.0" >/dev/null 2>&1
		go mod tidy >/dev/null 2>&1
		local t0 t1 n sum mb bin
		t0=$(date +%s.%N)
		go build -o app . >/dev/null
		t1=$(date +%s.%N)
		n=$(go list -m all | wc -l)
		sum=$(wc -l <go.sum)
		mb=$(du -sm modcache | cut -f1)
		bin=$(($(stat -c %s app) / 1024))
		printf '| %s | %s | %s | %s | %.1f | %s |\n' "$name" "$n" "$sum" "$mb" "$(echo "$t1 - $t0" | bc)" "$bin"
		go list -m all | sed 's/^/    /' >&2
	)
}

echo "| consumer | modules (go list -m all) | go.sum lines | module cache MB | first build s | binary KiB |"
echo "|---|---|---|---|---|---|"
consumer keyedlock github.com/steadfast-go/steadfast/keyedlock
consumer eventlog github.com/steadfast-go/steadfast/eventlog
consumer sqlitestore github.com/steadfast-go/steadfast/eventlog/sqlitestore
[ -f "$repo/eventlog/pgstore/go.mod" ] && consumer pgstore github.com/steadfast-go/steadfast/eventlog/pgstore
[ -f "$repo/keyedlock/pglock/go.mod" ] && consumer pglock github.com/steadfast-go/steadfast/keyedlock/pglock
exit 0
