#!/usr/bin/env bash
# Runs the proxy's real-node test (TestGethFailoverFailback) against two geth
# dev nodes on loopback. Installs geth v1.17.10 into $(go env GOPATH)/bin if
# it is not there yet (a cold build takes about 7-10 minutes on 2 cores; the
# binary is reused afterwards).
set -euo pipefail
cd "$(dirname "$0")/../../.."

GETH_VERSION=v1.17.10
gobin="$(go env GOBIN)"
[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
geth="$gobin/geth"

# Read the version into a variable rather than piping into grep/head: with
# pipefail, a reader that exits early kills geth with SIGPIPE and fails
# the script.
installed=""
if [ -x "$geth" ]; then
	installed="$("$geth" version 2>/dev/null || true)"
fi
if [[ "$installed" != *"Version: ${GETH_VERSION#v}"* ]]; then
	echo "== installing geth $GETH_VERSION into $gobin"
	go install "github.com/ethereum/go-ethereum/cmd/geth@$GETH_VERSION"
	installed="$("$geth" version)"
fi
echo "$installed" | sed -n '1,2p'

echo "== proxy real-node test (two geth --dev nodes)"
STEADFAST_GETH="$geth" go test -race -count=1 -run '^TestGethFailoverFailback$' -v ./examples/proxy/proxy/
