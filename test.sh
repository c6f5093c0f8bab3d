#!/usr/bin/env bash
# Every check: formatting, lints, unit and integration tests (the real binary on a real
# SoftHSM2 token, signatures checked by the openssl CLI, pkcs11-tool and ethers.js).
set -euo pipefail
cd "$(dirname "$0")"
deploy/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
