#!/usr/bin/env bash
# One command from a fresh Debian machine to a running gateway on its embedded default:
# installs dependencies, builds, initialises a SoftHSM2 token under DATA_DIR and serves.
#   DATA_DIR (default ./data)   LISTEN (default 127.0.0.1:8080)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
cargo build --release --locked -p bsn-gateway
data="${DATA_DIR:-./data}"
listen="${LISTEN:-127.0.0.1:8080}"
ops="${OPS_LISTEN:-127.0.0.1:9464}"
echo "bsn-gateway on http://$listen ; admin token in $data/admin.token ; metrics on http://$ops/metrics"
exec target/release/bsn-gateway serve --dev --data-dir "$data" --listen "$listen" --ops-listen "$ops"
