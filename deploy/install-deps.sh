#!/usr/bin/env bash
# Installs what building, running and testing bsn-gateway needs on Debian/Ubuntu:
# SoftHSM2 (the embedded default HSM), OpenSC's pkcs11-tool, OpenSSL headers and CLI,
# the PKCS#11 header (libp11-kit-dev; the tests' mock SM2 token is built against it),
# curl, systemd (systemd-analyze checks the shipped unit), swtpm with tpm2-pkcs11 (the
# second token of the custody suite), prometheus (promtool checks the
# alert rules and a live scrape), Node.js for the test-only tools
# in test-tools/ (ethers.js, ganache), and runs `npm ci` there; Python's venv for the pinned
# test-only Python tools (schemathesis) in .venv-tools/.
set -euo pipefail
cd "$(dirname "$0")/.."

# The second PKCS#11 implementation the tests run on: tpm2-pkcs11 over a software TPM
# (swtpm), through the tpm2-abrmd resource manager on a private D-Bus session bus.
packages=(softhsm2 opensc libssl-dev pkg-config openssl curl ca-certificates gcc libp11-kit-dev nodejs npm systemd prometheus
  swtpm tpm2-abrmd libtss2-tcti-swtpm0 libtss2-tcti-tabrmd0 libtpm2-pkcs11-1 libtpm2-pkcs11-tools dbus)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# A Node.js installed some other way counts.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
# A Python 3 with venv and pip, however installed, counts; else Debian's.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3 python3-venv)
fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 1
fi

# Test-only tools, pinned by test-tools/package-lock.json.
if [ ! -d test-tools/node_modules ] || [ test-tools/package-lock.json -nt test-tools/node_modules ]; then
  npm ci --prefix test-tools --no-audit --no-fund --loglevel=error
fi

# Test-only Python tools, pinned by test-tools/requirements.txt.
if [ ! -x .venv-tools/bin/schemathesis ] || [ test-tools/requirements.txt -nt .venv-tools/bin/schemathesis ]; then
  python3 -m venv .venv-tools
  .venv-tools/bin/pip install --quiet --disable-pip-version-check -r test-tools/requirements.txt
  touch .venv-tools/bin/schemathesis
fi
