#!/usr/bin/env bash
# Install Prometheus (server + promtool) and Alertmanager from Debian's archive when missing.
#
# Why: the alert rules are checked with `promtool check rules` / `promtool test rules`, an
# integration test scrapes our exporter with a real Prometheus server, and another has Alertmanager
# deliver the alerts to a webhook. Debian ships them as `prometheus` and `prometheus-alertmanager`.
# Idempotent: installs only what is missing, does nothing when all three binaries are on PATH.
# The packages' system services are never started (policy-rc.d forbids it during the install).
set -euo pipefail

PKGS=()
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then PKGS+=(prometheus); fi
# Debian installs the binary as prometheus-alertmanager (upstream: alertmanager).
if ! command -v prometheus-alertmanager >/dev/null 2>&1 && ! command -v alertmanager >/dev/null 2>&1; then
    PKGS+=(prometheus-alertmanager)
fi
if [ "${#PKGS[@]}" -eq 0 ]; then
    echo "prometheus and alertmanager already installed: $(command -v prometheus)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-prometheus: need root or sudo to apt-get install prometheus" >&2; exit 1
    fi
fi

# Forbid invoke-rc.d from starting the packaged service; restore the previous policy afterwards.
POLICY=/usr/sbin/policy-rc.d
BACKUP=""
if [ -e "$POLICY" ]; then BACKUP="$(mktemp)"; $SUDO cp -p "$POLICY" "$BACKUP"; fi
restore_policy() {
    if [ -n "$BACKUP" ]; then $SUDO mv -f "$BACKUP" "$POLICY"; else $SUDO rm -f "$POLICY"; fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
$SUDO chmod +x "$POLICY"

export DEBIAN_FRONTEND=noninteractive
# Another apt run (CI image setup, a colleague) may hold the dpkg lock: wait for it, do not fail.
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${PKGS[@]}"

command -v promtool >/dev/null 2>&1 || { echo "install-prometheus: promtool still missing" >&2; exit 1; }
command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
    || { echo "install-prometheus: alertmanager still missing" >&2; exit 1; }
echo "installed: $(prometheus --version 2>&1 | head -n1)"
