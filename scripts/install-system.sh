#!/usr/bin/env bash
# Install the system packages the project needs, only when some are missing (idempotent, fast
# when everything is there). Debian/Ubuntu only; runs apt-get as root or through sudo.
set -euo pipefail
PACKAGES=(docker.io docker-compose mmdebstrap nginx-light prometheus prometheus-alertmanager haproxy curl python3-venv chromium)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-system: installing ${missing[*]}"
$SUDO apt-get update -qq
# policy-rc.d keeps Debian from starting the packaged nginx/prometheus/haproxy services:
# the project runs its own instances on loopback ports, and nothing else should listen.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
