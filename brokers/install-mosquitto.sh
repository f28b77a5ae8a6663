#!/usr/bin/env bash
# Make sure a mosquitto binary exists: the system one, else Debian's package when we are root,
# else a clear message. Idempotent: does nothing when mosquitto is already there.
set -euo pipefail

if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto not found: installing Debian's mosquitto and mosquitto-clients" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
    # The package starts a system broker on :1883; EVC starts its own brokers on free ports.
    exit 0
fi
cat >&2 <<'MSG'
EVC needs the mosquitto broker binary for its harness, tests and demo.
Install it, then run make again:
  Debian/Ubuntu:  sudo apt-get install -y mosquitto mosquitto-clients
  macOS:          brew install mosquitto
  Fedora:         sudo dnf install mosquitto
Alternatively, with Docker available, the harness runs the eclipse-mosquitto image.
MSG
exit 1
