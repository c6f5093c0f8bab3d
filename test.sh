#!/usr/bin/env bash
# Every check: formatting, lints, unit and integration tests (the real binary on a real
# SoftHSM2 token, signatures checked by the openssl CLI, pkcs11-tool and ethers.js).
set -euo pipefail
cd "$(dirname "$0")"
deploy/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"
# The Debian package: built, installed with dpkg, the installed binary run.
deploy/deb/check.sh
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
