#!/bin/bash
# The checks a many-core host with AVX-512 IFMA is for, in one run that ends within a time
# budget (a lent machine's minutes): the multi-buffer path per core (three runs), POST
# /v1/verify end to end on every core at 64 and 256 connections, the gateway on 3/4 of the
# cores with the client on the rest, then the long differential (P-256, then SM2) in the
# time left. Each step writes its own log, so a run cut short keeps what it did.
#   benches/many-core.sh [BUDGET_SECONDS]     (default 540)
# BSN_BIN_DIR: where verify-mb, verify-load and bsn-gateway are (default target/release);
# BSN_OUT: where the logs go (default many-core-logs). SoftHSM2 must be installed (the
# gateway's embedded token); `openssl` on the PATH is the peer.
# BSN_BASE_GATEWAY=PATH: another build of the gateway (an earlier commit) to compare with,
# runs of the two interleaved at 64 and at 4 connections (ab.log), after the per-core runs.
set -u
budget=${1:-540}
bin=${BSN_BIN_DIR:-target/release}
out=${BSN_OUT:-many-core-logs}
mkdir -p "$out"
export RUST_BACKTRACE=0
cores=$(nproc)
pin=$((cores * 3 / 4))
ifma=$(grep -c avx512ifma /proc/cpuinfo)
{
  date -u
  grep -m1 'model name' /proc/cpuinfo
  echo "cores $cores, with IFMA $ifma"
  lscpu | grep -E 'Thread|Core|Socket|MHz'
  openssl version
} > "$out/host.txt" 2>&1
# step LOG SECONDS COMMAND...: at most SECONDS, and never past the budget.
step() {
  local log=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt 10 ] && return
  echo "== $* (at $SECONDS s, for at most $limit s)" >> "$out/$log"
  timeout "$limit" env "$@" >> "$out/$log" 2>&1
}
if [ "$ifma" -gt 0 ]; then
  for _ in 1 2 3; do step mb.log 80 "$bin/verify-mb" 3; done
fi
if [ -n "${BSN_BASE_GATEWAY:-}" ]; then
  for conns in 64 4; do
    for gw in "$BSN_BASE_GATEWAY" "$bin/bsn-gateway" "$BSN_BASE_GATEWAY" "$bin/bsn-gateway"; do
      step ab.log 80 BSN_BENCH_GATEWAY="$gw" "$bin/verify-load" 2 "$conns"
    done
  done
fi
step verify-64.log 170 "$bin/verify-load" 3 64
step verify-256.log 120 "$bin/verify-load" 2 256
step verify-pinned.log 170 BSN_BENCH_PIN=$pin "$bin/verify-load" 3 64
if [ "$ifma" -gt 0 ]; then
  half=$(((budget - SECONDS) / 2))
  step diff.log "$half" "$bin/verify-mb" diff 10000000 ecdsa-p256
  step diff.log $((budget - SECONDS)) "$bin/verify-mb" diff 10000000 sm2
fi
echo "done at $SECONDS s" >> "$out/host.txt"
