#!/usr/bin/env bash
# Reproduces the numbers in bench/README.md: every peer comparison with
# -count=6, summarised by benchstat (medians). Run it on a quiet machine;
# it takes about 20 minutes on 2 cores. Results go to ./results/ (not
# committed) unless a directory is given.
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-results}"
mkdir -p "$out"

echo "== library packages vs peers (-count=6)"
go test -run '^$' -bench . -benchmem -count 6 \
	./keyedlock/ ./eventlog/ ./replayqueue/ ./failover/ ./sendqueue/ | tee "$out/libs.txt"

echo "== examples: proxy overhead and SSE fan-out (-count=6, 3s each)"
go test -run '^$' -bench . -benchmem -benchtime 3s -count 6 ./proxy/ ./sse/ | tee "$out/examples.txt"

echo "== benchstat"
go tool benchstat "$out/libs.txt" | tee "$out/libs.benchstat.txt"
go tool benchstat "$out/examples.txt" | tee "$out/examples.benchstat.txt"
