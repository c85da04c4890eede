#!/usr/bin/env bash
# Installs the Debian packages lbfleet needs to build, test and run. Idempotent: runs apt-get only when a
# package is missing. Later tiers (boot services, QEMU lab, browser tests) add their packages here.
set -euo pipefail

# dnsmasq and tftpd-hpa are benchmark peers (bench-tftp), iproute2 gives `ip netns` for their private namespace.
packages=(build-essential pkg-config ca-certificates curl sqlite3 tftp-hpa iproute2 dnsmasq tftpd-hpa)
# Packages whose Debian install also enables a system service we do not want running.
services=(dnsmasq tftpd-hpa)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # dnsmasq (DNS on :53) and tftpd-hpa (TFTP on :69) start system services when installed; lbfleet only runs
  # them as benchmark peers, in a namespace of their own. Debian's policy-rc.d protocol keeps the install from
  # starting them (used only when the machine has no policy of its own), then they are disabled at boot.
  # Nothing is stopped by name: tftpd-hpa's init script would kill every in.tftpd on the machine.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from lbfleet scripts/install-deps.sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  if grep -q 'lbfleet scripts/install-deps.sh' "$policy" 2>/dev/null; then
    rm -f "$policy"
    trap - EXIT
  fi
  for svc in "${services[@]}"; do
    [[ " ${missing[*]} " == *" $svc "* ]] || continue
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      # Stops only the unit's own processes (its cgroup).
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
    echo "install-deps: disabled the $svc system service (bench-tftp starts its own in a private netns)"
  done
fi

if ! command -v cargo >/dev/null 2>&1; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && { echo "install-deps: cargo is in $d but not on PATH; add it: export PATH=$d:\$PATH" >&2; exit 1; }
  done
  echo "install-deps: no Rust toolchain found (cargo); install Rust 1.87 or newer with rustup" >&2
  exit 1
fi
