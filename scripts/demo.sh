#!/usr/bin/env bash
# `make demo`: builds (by the Makefile) and starts a whole virtual site in the background with lbfleet-lab
# (tests/src/bin/lbfleet_lab.rs on the lab library in tests/src/lab/): lbfleet-server on a boot/external bridge,
# three real HTTP servers on an internal bridge, a client namespace, cluster `web` with two PXE-booted QEMU
# balancers and a third, unregistered machine. State and logs under var/; `make demo-down` removes it all.
# Running it again first removes what the previous run (or a crash) left.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: the site needs root (network namespaces, bridges, taps); run: sudo make demo" >&2
  exit 1
fi
mkdir -p var
# The binaries `make build` just made, as they are (no second build from inside the lab tool).
export LBFLEET_BIN_DIR="$PWD/target/release"
# The image `make image` just built (the newest under target/images/).
image=$(ls -td target/images/*/ 2>/dev/null | head -1)
if [ -z "$image" ] || [ ! -f "$image/initrd.img" ]; then
  echo "demo: no image under target/images/; run: make image" >&2
  exit 1
fi
export LBFLEET_IMAGE_DIR="$PWD/${image%/}"
# Its own session: the machines and the server keep running after this returns, and a Ctrl-C here does not
# reach them.
exec setsid -w "$LBFLEET_BIN_DIR/lbfleet-lab" up --var var ${DEMO_PORT:+--port "$DEMO_PORT"} ${DEMO_ARGS:-}
