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
# The A/B slots' unit and its documentation.
[ -s /lib/systemd/system/bsn-gateway-slots.service ]
[ -s /usr/share/doc/bsn-gateway/firmware.md ]

# It starts as its user: a token in the system store (group softhsm, as an operator makes
# it), the unit's ExecStart run as bsn-gateway, ready on /readyz, then a clean SIGTERM.
# systemd is not PID 1 in CI, so its sandbox is checked offline (tests/systemd.rs).
label="bsn-deb-check-$$"
pin=$(openssl rand -hex 16)
conf=/etc/bsn-gateway/check-$$.toml
gw_pid=""
cleanup() {
    [ -z "$gw_pid" ] || $SUDO kill "$gw_pid" 2>/dev/null || true
    $SUDO softhsm2-util --delete-token --token "$label" >/dev/null 2>&1 || true
    $SUDO rm -f "$conf" "/etc/bsn-gateway/check-$$.pin"
    $SUDO find /var/lib/bsn-gateway -mindepth 1 -delete
}
trap cleanup EXIT
$SUDO runuser -u bsn-gateway -- softhsm2-util --init-token --free --label "$label" \
    --so-pin "$pin" --pin "$pin" >/dev/null
printf '%s' "$pin" | $SUDO install -o root -g bsn-gateway -m 0640 /dev/stdin "/etc/bsn-gateway/check-$$.pin"
sed -e "s/^token_label = .*/token_label = \"$label\"/" \
    -e "s|^pin = .*|pin = { file = \"/etc/bsn-gateway/check-$$.pin\" }|" \
    -e 's/^listen = .*/listen = "127.0.0.1:0"\nops_listen = "127.0.0.1:0"/' \
    /etc/bsn-gateway/gateway.toml | $SUDO install -o root -g bsn-gateway -m 0640 /dev/stdin "$conf"
$SUDO runuser -u bsn-gateway -- /usr/bin/bsn-gateway config check "$conf" >/dev/null
# setpriv execs in place (runuser would stay as the parent and die by the signal itself).
$SUDO setpriv --reuid=bsn-gateway --regid=bsn-gateway --init-groups -- \
    /usr/bin/bsn-gateway serve --config "$conf" >/tmp/bsn-deb-check.log 2>&1 &
gw_pid=$!
ready=""
for _ in $(seq 1 100); do
    if ops=$($SUDO cat /var/lib/bsn-gateway/ops.addr 2>/dev/null) &&
        curl -fsS "http://$ops/readyz" >/dev/null 2>&1; then
        ready=yes
        break
    fi
    sleep 0.2
done
[ -n "$ready" ] || { cat /tmp/bsn-deb-check.log; echo "deb: not ready as bsn-gateway" >&2; exit 1; }
# What it wrote belongs to the service user.
[ "$($SUDO stat -c '%U' /var/lib/bsn-gateway/ops.addr)" = "bsn-gateway" ]
$SUDO kill -TERM "$gw_pid"
wait "$gw_pid" || { cat /tmp/bsn-deb-check.log; echo "deb: unclean stop" >&2; exit 1; }
gw_pid=""
echo "deb: started as bsn-gateway on a system-store token, ready, stopped cleanly"
echo "deb: installed and checked $deb"
