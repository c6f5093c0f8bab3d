#!/usr/bin/env bash
# Builds target/bsn-gateway_<version>_<arch>.deb with dpkg-deb from the release binary:
# /usr/bin/bsn-gateway, /etc/bsn-gateway/gateway.toml (a conffile), the systemd unit, the
# HSM profiles, the Prometheus rules and Grafana dashboard, and the README; the postinst creates the bsn-gateway user and
# /var/lib/bsn-gateway.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -p bsn-gateway
version=$(target/release/bsn-gateway --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 target/release/bsn-gateway "$root/usr/bin/bsn-gateway"
install -D -m 0640 deploy/deb/gateway.toml "$root/etc/bsn-gateway/gateway.toml"
install -D -m 0644 deploy/systemd/bsn-gateway.service "$root/lib/systemd/system/bsn-gateway.service"
install -D -m 0644 deploy/systemd/bsn-gateway-slots.service "$root/lib/systemd/system/bsn-gateway-slots.service"
install -D -m 0644 README.md "$root/usr/share/doc/bsn-gateway/README.md"
install -D -m 0644 firmware/README.md "$root/usr/share/doc/bsn-gateway/firmware.md"
install -d "$root/usr/share/bsn-gateway/hsm-profiles"
install -m 0644 hsm-profiles/*.toml "$root/usr/share/bsn-gateway/hsm-profiles/"
install -d "$root/usr/share/bsn-gateway/prometheus" "$root/usr/share/bsn-gateway/grafana"
install -m 0644 deploy/prometheus/*.yml "$root/usr/share/bsn-gateway/prometheus/"
install -m 0644 deploy/grafana/*.json "$root/usr/share/bsn-gateway/grafana/"
install -D -m 0755 deploy/deb/postinst "$root/DEBIAN/postinst"
echo /etc/bsn-gateway/gateway.toml > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: bsn-gateway
Version: $version
Architecture: $arch
Maintainer: bsn-gateway maintainers <bsn-gateway@localhost>
Depends: libssl3 | libssl3t64, passwd
Recommends: softhsm2
Section: net
Priority: optional
Description: HSM-backed crypto gateway for blockchain service networks
 Holds keys in a PKCS#11 token and signs over HTTP, batch-verifies signatures on
 every core, and forwards vetted transactions to ledger nodes durably.
CONTROL
out="target/bsn-gateway_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$out" >/dev/null
echo "$out"
