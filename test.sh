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
# The verification tests once more as on a CPU without AVX-512 IFMA (BSN_NO_IFMA hides it
# where this one has it): the vector path must decline every lane and the scalar path
# answer, through the engine and over HTTP. Output shown, so the skip lines prove the
# fallback ran.
no_ifma=$(mktemp)
trap 'rm -f "$log" "$no_ifma"' EXIT
BSN_NO_IFMA=1 cargo test --workspace --locked --lib -- verify:: --nocapture 2>&1 | tee "$no_ifma"
BSN_NO_IFMA=1 cargo test --workspace --locked --test verify_engine --test verify_http -- --nocapture 2>&1 | tee -a "$no_ifma"
grep -q "this CPU has no AVX-512 IFMA" "$no_ifma" || { echo "the BSN_NO_IFMA run did not take the scalar path" >&2; exit 1; }
cat "$no_ifma" >> "$log"
# The Debian package: built, installed with dpkg, the installed binary run.
deploy/deb/check.sh
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
