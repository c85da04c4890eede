#!/usr/bin/env bash
# The test tiers behind `make check` and `make test`, each timed; the times are printed at the end.
#
#   scripts/test.sh check   fmt, clippy, unit tests and the component tests that need neither root, network
#                           namespaces, QEMU nor Chromium (any developer machine)
#   scripts/test.sh full    the same, then the component tests on PostgreSQL (a cluster each test binary starts
#                           itself) and the privileged tiers: netns (root), vm (QEMU), browser (Chromium)
#
# Every binary is built once, before any test runs (`cargo test --workspace --no-run`); tests only locate the
# binaries they start (LBFLEET_BIN_DIR=target/debug), they never run cargo themselves.
# Every integration-test file is in exactly one list below; the script refuses to run when one is not, so a new
# test cannot silently fall out of both tiers.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
CARGO=${CARGO:-cargo}

# package:test-file of the component tier (no privileges).
component=(
  lbfleet-server:api lbfleet-server:boot lbfleet-server:cli lbfleet-server:connections lbfleet-server:images
  lbfleet-server:listeners lbfleet-server:login_flood lbfleet-server:retention lbfleet-server:tls
  lbfleet-server:web lbfleet-server:report_flood lbfleet-server:held_connections lbfleet-server:export_crawl
  lbfleet-server:healthz lbfleet-server:boot_cache lbfleet-server:servers lbfleet-server:keepalived_import
  lbfleet-server:traffic
  lbfleet-server:liveness
  lbfleet-server:rollouts
  lbfleet-server:cluster_scale
  lbfleet-server:report_delta
  lbfleet-agent:cli lbfleet-agent:role_limit lbfleet-agent:server_mode lbfleet-agent:failover
  lbfleet-agent:reboot
)
# package:test-file of the tests that need PostgreSQL whatever the backend (several servers on one database): run
# in full mode with the component tier's PostgreSQL pass.
postgres=(
  lbfleet-server:ha_postgres lbfleet-server:db_copy
)
# package:test-file of the privileged tiers, in the order they run. Every file of tests/tests is privileged.
privileged=(
  lbfleet-server:dhcp_netns lbfleet-server:dhcp_ha_netns lbfleet-agent:health_netns lbfleet-server:browser
  lbfleet-server:keepalived_export_netns
)
for f in tests/tests/*.rs; do privileged+=("lbfleet-tests:$(basename "$f" .rs)"); done

declare -A dir_of=([lbfleet-server]=server [lbfleet-agent]=agent [lbfleet-tests]=tests)
listed=" ${component[*]} ${postgres[*]} ${privileged[*]} "
unlisted=()
for d in server agent; do
  for f in "$d"/tests/*.rs; do
    [ -e "$f" ] || continue
    key="lbfleet-$d:$(basename "$f" .rs)"
    [[ "$listed" == *" $key "* ]] || unlisted+=("$f")
  done
done
for key in "${component[@]}" "${postgres[@]}" "${privileged[@]}"; do
  f="${dir_of[${key%%:*}]}/tests/${key#*:}.rs"
  [ -e "$f" ] || unlisted+=("$f (listed, missing)")
done
if [ ${#unlisted[@]} -gt 0 ]; then
  echo "scripts/test.sh: not in exactly one tier list: ${unlisted[*]}" >&2
  exit 1
fi

times=()
total_start=$SECONDS
tier() { # name, command...
  local name=$1 start=$SECONDS
  shift
  echo "== tier $name: $*"
  "$@"
  times+=("$(printf '%-10s %4ds' "$name" $((SECONDS - start)))")
}

# `cargo test --workspace --test a --test b ...` for the files of a list. Always `--workspace`: `-p` resolves
# another feature set and would build everything a second time. (A name in two packages, like `cli`, runs both,
# which is fine as long as both are in the same tier.)
run_list() {
  local args=() key
  for key in "$@"; do args+=(--test "${key#*:}"); done
  "$CARGO" test --workspace --no-fail-fast "${args[@]}"
}

# The same on PostgreSQL: the kit maps every test database to one of a cluster each test binary starts.
run_list_pg() {
  LBFLEET_TEST_DATABASE=postgres run_list "$@"
}

# The privileged tier and the PostgreSQL pass of the component tests, in two lanes side by side (the machine
# has two cores; a lane that waits on timers leaves most of one idle):
#   lane 1, the tests that run QEMU machines (CPU-bound under TCG): the one-machine guest and PXE tests first,
#           then the two-balancer sites (site_*, then fleet and vrrp_conn_sync, whose failover and drain bounds are
#           the most timing-sensitive), by when lane 2 is mostly done;
#   lane 2, the network-namespace and browser tests, then the component tests on PostgreSQL (each test binary
#           starts its own cluster).
# Each lane keeps its order; lane 2's output is printed whole after it ends, with its own time. Both lanes run to
# the end; either failing fails the tier.
run_privileged() {
  local single=() sites=() other=() key
  for key in "${privileged[@]}"; do
    case "$key" in
      lbfleet-tests:guest_* | lbfleet-tests:pxe_*) single+=("$key") ;;
      lbfleet-tests:site_*) sites+=("$key") ;;
      lbfleet-tests:fleet | lbfleet-tests:vrrp_conn_sync) ;;
      *) other+=("$key") ;;
    esac
  done
  local log rc=0 pid
  log=$(mktemp)
  (
    start=$SECONDS lane=0
    run_list "${other[@]}" || lane=$?
    echo "== lane 2: network namespaces and browser done after $((SECONDS - start)) s"
    run_list_pg "${component[@]}" "${postgres[@]}" || lane=$?
    echo "== lane 2: component tests on PostgreSQL done after $((SECONDS - start)) s"
    exit "$lane"
  ) >"$log" 2>&1 &
  pid=$!
  run_list "${single[@]}" || rc=$?
  run_list "${sites[@]}" || rc=$?
  # The two with sub-second failover and drain bounds last (one cargo run orders its binaries by name).
  run_list lbfleet-tests:fleet lbfleet-tests:vrrp_conn_sync || rc=$?
  wait "$pid" || rc=$?
  echo "== lane 2 (ran alongside): ${other[*]}; then on PostgreSQL: ${component[*]} ${postgres[*]}"
  cat "$log"
  rm -f "$log"
  return "$rc"
}

export LBFLEET_BIN_DIR="$PWD/target/debug"
tier layout bash scripts/check-layout.sh
tier fmt "$CARGO" fmt --all -- --check
tier clippy "$CARGO" clippy --workspace --all-targets -- -D warnings
tier build "$CARGO" test --workspace --no-run
tier unit "$CARGO" test --no-fail-fast --workspace --lib --bins
tier doc "$CARGO" test --workspace --doc
tier component run_list "${component[@]}"
if [ "$mode" = full ]; then
  # The privileged tiers, and alongside them the component tests again on PostgreSQL: each test binary starts
  # its own cluster (tests/src/postgres.rs).
  tier privileged run_privileged
fi

echo
echo "== times ($mode)"
printf '%s\n' "${times[@]}"
printf '%-10s %4ds\n' total $((SECONDS - total_start))
