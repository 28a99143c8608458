#!/usr/bin/env bash
# The test command of README.md: installs what the tests need when it is missing, then runs
# the whole suite. Safe to run again; installs nothing that is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# openssl CLI: the interop tests unwrap key exports with `openssl pkeyutl`.
command -v openssl >/dev/null || apt_install openssl

# systemd-analyze: tests/systemd.rs runs `systemd-analyze verify` on dist/systemd/ (systemd
# need not be PID 1 for that).
command -v systemd-analyze >/dev/null || apt_install systemd

# python3 with `cryptography`: the interop tests open records with a script written from
# docs/formats.md.
command -v python3 >/dev/null || apt_install python3 python3-pip
if ! python3 -c 'import cryptography.hazmat.primitives.ciphers.aead' 2>/dev/null; then
  python3 -m pip install --quiet cryptography 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages cryptography 2>/dev/null \
    || apt_install python3-cryptography
fi

# PostgreSQL server binaries (initdb, pg_ctl): tests/archive.rs and benches/archive.rs start a
# throwaway server in a temp dir (as user postgres when run as root, since initdb refuses root).
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && [ -z "${IMCRYPT_PG_BIN:-}" ]; then
  apt_install postgresql
fi

# Prometheus and promtool: tests/metrics.rs starts a throwaway Prometheus in a temp dir that
# scrapes the daemons, and checks the exposition and dist/prometheus/'s rules with promtool.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install prometheus
fi
# rsyslog and Prometheus Alertmanager: tests/alarm_sinks.rs delivers alarms to both (started in
# temp dirs on 127.0.0.1, tests/support/services.rs).
[ -x /usr/sbin/rsyslogd ] || apt_install rsyslog
# rsyslog's GnuTLS driver: the syslog sink's TLS transport is tested against rsyslog's TLS input.
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || apt_install rsyslog-gnutls
[ -x /usr/bin/prometheus-alertmanager ] || apt_install prometheus-alertmanager

# Chromium and chromedriver: tests/console.rs drives the web console in a real, headless
# browser.
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || apt_install chromium chromium-driver

# Schemathesis (from PyPI, pinned so that a run is reproducible): tests/admin_api.rs fuzzes
# the admin API of a live daemon against docs/admin-api.yaml. Installed in a virtualenv under
# target/, so nothing outside the repository changes.
st_venv=target/tools/schemathesis
st_pins="schemathesis==4.32.5 hypothesis==6.170.17"
if ! "$st_venv/bin/st" --version 2>/dev/null | grep -q 4.32.5; then
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
  rm -rf "$st_venv"
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install --quiet --disable-pip-version-check $st_pins
fi
export IMCRYPT_SCHEMATHESIS="$PWD/$st_venv/bin/st"

exec cargo test --locked "$@"
