# lbfleet: the two commands of the README are `make demo` and `make test`.
CARGO ?= cargo
SERVER := target/release/lbfleet-server

.PHONY: all deps build image demo demo-ha demo-down demo-status check test lint guest bench bench-longpoll bench-dhcp bench-dhcp-pg bench-dhcp-takeover bench-ipvs bench-tftp bench-pxe bench-vrrp bench-health bench-site bench-import bench-dr bench-rollout fuzz clean

all: build

# System packages (idempotent; apt-get only when something is missing).
deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace --bins

# A boot image (Debian kernel + initramfs with busybox, modules, the release agent, /init) in
# target/images/<version>/; `lbfleet-server image add target/images/<version>` serves it. See docs/images.md.
IMAGE_OUT ?= target/images
image: deps
	$(CARGO) build --release -p lbfleet-agent -p lbfleet-images
	./target/release/lbfleet-images build --agent target/release/lbfleet-agent --out $(IMAGE_OUT) $(IMAGE_ARGS)

# A whole virtual site in the background (root): lbfleet-server, real servers, a client and three PXE-booted
# QEMU machines booting the image `make image` built; prints the dashboard URL (127.0.0.1:8080, or the next
# free port), the admin login and what to try. State and logs under var/. `make demo` again starts over;
# `make demo-down` removes everything.
demo: build image
	@bash scripts/demo.sh

# The same site with two lbfleet-servers on one boot network, both on a PostgreSQL cluster this target starts
# itself (initdb in var/demo/pg as the postgres user, Unix socket only); prints besides what `make demo`
# prints how to kill a server and power-cycle a balancer to watch it boot from the other. `make demo-down`
# removes it all, the database included. See docs/high-availability.md#try-it.
demo-ha: build image
	@DEMO_ARGS="--ha $(DEMO_ARGS)" bash scripts/demo.sh

demo-down:
	@if [ -x target/release/lbfleet-lab ]; then target/release/lbfleet-lab down --var var; \
	else $(CARGO) run --release -p lbfleet-tests --bin lbfleet-lab -- down --var var; fi

demo-status:
	@target/release/lbfleet-lab status --var var

# The test tiers (scripts/test.sh; CONTRIBUTING.md#tests). Both build every binary once, before any test, and
# print each tier's time at the end.
# `make check`: fmt, clippy, unit and component tests; needs neither root, namespaces, QEMU nor Chromium.
check:
	@bash scripts/test.sh check

# `make test` (the README's and CI's command): `check`, then the netns, VM and browser tiers (root).
test: deps
	@bash scripts/test.sh full

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The QEMU/netns end-to-end tests of tests/ alone (root), on binaries built first.
guest: deps
	$(CARGO) test --workspace --no-run
	LBFLEET_BIN_DIR=$(CURDIR)/target/debug $(CARGO) test --workspace \
	  $(foreach t,$(basename $(notdir $(wildcard tests/tests/*.rs))),--test $(t))

bench: bench-longpoll bench-dhcp bench-dhcp-pg bench-dhcp-takeover bench-ipvs bench-tftp bench-pxe bench-vrrp bench-health bench-site bench-import bench-dr bench-rollout

bench-longpoll: deps
	$(CARGO) run --release -p lbfleet-bench --bin bench-longpoll -- $(BENCH_ARGS)

# perfdhcp against lbfleet, Kea and dnsmasq in namespaces this target creates (root).
bench-dhcp: build
	bash bench/dhcp.sh $(BENCH_SECONDS)

# The same with both lease stores on one PostgreSQL cluster the script starts: lbfleet vs Kea's pgsql backend.
bench-dhcp-pg: build
	bash bench/dhcp.sh $(BENCH_SECONDS) --postgres

# DHCP takeover after kill -9: lbfleet hot standby vs Kea's HA hook, in namespaces this target creates (root).
bench-dhcp-takeover: build
	bash bench/dhcp-takeover.sh $(BENCH_ROUNDS)

# IPVS programming in a QEMU guest: lbfleet-agent vs ipvsadm -R (release build of agent, probe and bench).
bench-ipvs: deps
	$(CARGO) build --release -p lbfleet-agent -p lbfleet-tests -p lbfleet-bench --bins
	./target/release/bench-ipvs $(BENCH_ARGS)

# Health-check drain time and CPU in a QEMU guest: lbfleet-agent vs keepalived HTTP_GET (same settings).
bench-health: deps
	$(CARGO) build --release -p lbfleet-agent -p lbfleet-tests -p lbfleet-bench --bins
	./target/release/bench-health $(BENCH_ARGS)

# TFTP/HTTP boot throughput vs dnsmasq and tftpd-hpa. Needs root (creates and deletes its own netns).
bench-tftp: deps
	$(CARGO) build --release -p lbfleet-bench --bin bench-tftp
	./target/release/bench-tftp $(BENCH_TFTP_ARGS)

# PXE boot of QEMU machines (TCG) in a netns lab: lbfleet to serving vs dnsmasq DHCP+TFTP to /init, BIOS and
# UEFI, plus a boot storm. Root. BENCH_PXE_ARGS e.g. `--image target/images/<version> --runs 3 --storm 4`.
bench-pxe: deps
	$(CARGO) build --release -p lbfleet-server -p lbfleet-agent -p lbfleet-tests -p lbfleet-bench --bins
	./target/release/bench-pxe $(BENCH_PXE_ARGS)

# VRRP failover outage seen by a prober, lbfleet-agent vs keepalived (v2 1 s, v3 100 ms), netns lab (root).
# BENCH_VRRP_ARGS: --trials N, --only v2|v3, or --soak SECONDS for the CPU-saturation false-failover soak.
bench-vrrp: deps
	$(CARGO) build --release -p lbfleet-agent -p lbfleet-tests -p lbfleet-bench --bins
	./target/release/bench-vrrp $(BENCH_VRRP_ARGS)

# The demo site measured by its client (root, QEMU TCG): boot to serving, failover outage, drain time, each
# against its goal. BENCH_SITE_ARGS: --failovers N, --drains N, --interval-ms MS, --image DIR.
bench-site: deps
	$(CARGO) build --release -p lbfleet-server -p lbfleet-agent -p lbfleet-tests -p lbfleet-bench --bins
	./target/release/bench-site $(BENCH_SITE_ARGS)

# A rollout of the demo pair (root, QEMU TCG): each node's time against its own reboot to serving (goal <= 1.3x)
# and requests lost per rollout (goal <= 1). BENCH_ROLLOUT_ARGS: --rounds N, --interval-ms MS, --image DIR.
bench-rollout: deps
	$(CARGO) build --release -p lbfleet-server -p lbfleet-agent -p lbfleet-tests -p lbfleet-bench --bins
	./target/release/bench-rollout $(BENCH_ROLLOUT_ARGS)

# keepalived.conf import of 1,000 virtual_server x 10 real_server over 20 includes: `import --dry-run` vs
# `keepalived -t` on the same files (ratio of medians), and the applied import's time. Root (its own netns).
# BENCH_IMPORT_TRIALS: runs of each (default 5).
bench-import: deps
	$(CARGO) build --release -p lbfleet-server --bin lbfleet-server
	bash bench/keepalived-import.sh $(BENCH_IMPORT_TRIALS)

# DR vs NAT through the same balancer in a QEMU guest (TCG): requests/s and bytes/s of a download-heavy load
# and the DR/NAT ratio. BENCH_DR_ARGS: --requests N, --seconds S, --workers N, --size-kib K, --rounds N.
bench-dr: deps
	$(CARGO) build --release -p lbfleet-agent -p lbfleet-tests -p lbfleet-bench --bins
	./target/release/bench-dr $(BENCH_DR_ARGS)

# cargo-fuzz on the DHCP, TFTP and VRRP decoders and the keepalived.conf parser, FUZZ_SECONDS per target (not part of `make test`). cargo-fuzz
# needs nightly rustc flags; RUSTC_BOOTSTRAP=1 lets the machine's stable toolchain accept them.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := dhcp_decode dhcp_handle tftp_decode vrrp_decode keepalived_parse
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t && \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf var
