#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg (needs root: CI), and runs the
# installed binary's --version and `config check` on the shipped config.
set -euo pipefail
cd "$(dirname "$0")/../.."
deb=$(deploy/deb/build.sh)
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO dpkg -i "$deb" >/dev/null
/usr/bin/bsn-gateway --version
# As the service user, as the unit's pre-start check runs it: root would read anything.
$SUDO runuser -u bsn-gateway -- /usr/bin/bsn-gateway config check /etc/bsn-gateway/gateway.toml
[ "$(stat -c '%U %G %a' /etc/bsn-gateway/gateway.toml)" = "root bsn-gateway 640" ]
getent passwd bsn-gateway >/dev/null
[ "$(stat -c '%U %a' /var/lib/bsn-gateway)" = "bsn-gateway 700" ]
# The shipped alert rules are the tested ones, loadable where the package put them.
promtool check rules /usr/share/bsn-gateway/prometheus/bsn-gateway-alerts.yml >/dev/null
[ -s /usr/share/bsn-gateway/grafana/bsn-gateway.json ]
echo "deb: installed and checked $deb"
