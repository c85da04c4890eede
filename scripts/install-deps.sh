#!/usr/bin/env bash
# Installs the Debian packages lbfleet needs to build, test and run. Idempotent: runs apt-get only when a
# package is missing. Later tiers (QEMU lab) add their packages here.
set -euo pipefail

# Build and run; test clients (tftp-hpa, udhcpc in busybox, dhclient, perfdhcp); benchmark peers (Kea, dnsmasq,
# tftpd-hpa);
# headless Chromium and its WebDriver for the dashboard's browser tests.
packages=(build-essential pkg-config ca-certificates curl sqlite3 iproute2 busybox-static tftp-hpa isc-dhcp-client
  kea-admin kea-dhcp4-server dnsmasq-base tftpd-hpa chromium chromium-driver)
# VM test tier (tests/): QEMU (TCG), Debian's kernel with the ip_vs modules, static busybox for the guest
# initramfs, ipvsadm as the reference the guest tests compare against, strace to record its netlink bytes.
packages+=(qemu-system-x86 linux-image-amd64 ipvsadm strace)
# netns PXE lab (tests/src/lab, bench-pxe): UEFI firmware (OVMF), iPXE for TFTP chainloading (undionly.kpxe,
# ipxe.efi) and QEMU's iPXE option ROMs; dnsmasq-base (above) is the PXE benchmark's peer.
packages+=(ovmf ipxe ipxe-qemu)
# VRRP netns tests and bench-vrrp: keepalived as the independent peer (started by hand in test namespaces).
packages+=(keepalived)
# PostgreSQL backend (issue 21): the component tests and `make demo-ha` start their own clusters with initdb in
# a temporary directory (never the packaged cluster); Kea's PostgreSQL lease backend for bench-dhcp-pg.
packages+=(postgresql kea-common)
# Installed services that must not run at boot either (bench-tftp starts tftpd-hpa itself, in its own netns).
# dnsmasq-base ships no service.
no_boot_services=(tftpd-hpa keepalived postgresql)

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
  # Packages like kea-dhcp4-server would start their daemon on install and answer DHCP on the host's
  # interfaces; the benchmarks start them by hand inside their own namespaces. Deny service starts meanwhile.
  policy=/usr/sbin/policy-rc.d
  created_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Nothing is stopped by name here: tftpd-hpa's init script stops every in.tftpd on the machine.
  for svc in "${no_boot_services[@]}"; do
    [[ " ${missing[*]} " == *" $svc "* ]] || continue
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true # only the unit's own processes
    elif command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
    echo "install-deps: disabled the $svc system service at boot (tests and benchmarks start their own)"
  done
fi

if ! command -v cargo >/dev/null 2>&1; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && { echo "install-deps: cargo is in $d but not on PATH; add it: export PATH=$d:\$PATH" >&2; exit 1; }
  done
  echo "install-deps: no Rust toolchain found (cargo); install Rust 1.87 or newer with rustup" >&2
  exit 1
fi
