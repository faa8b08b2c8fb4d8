#!/usr/bin/env bash
# Runs the headless-Chromium tests of the SSE example's web page.
# Installs Debian's chromium with apt-get if it is missing.
set -euo pipefail
cd "$(dirname "$0")/../../.."

exe="${STEADFAST_CHROMIUM:-}"
if [ -z "$exe" ]; then
	exe="$(command -v chromium || command -v chromium-browser || true)"
fi
if [ -z "$exe" ]; then
	echo "== installing chromium (apt-get)"
	if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
	exe="$(command -v chromium)"
fi
echo "== browser test with $exe"
STEADFAST_CHROMIUM="$exe" go test -race -count=1 -run '^TestWebPage' -v ./examples/sse/server/
