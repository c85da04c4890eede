# lbfleet: the two commands of the README are `make demo` and `make test`.
CARGO ?= cargo
SERVER := target/release/lbfleet-server

.PHONY: all deps build demo test lint unit bench bench-longpoll bench-dhcp clean

all: build

# System packages (idempotent; apt-get only when something is missing).
deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace --bins

# Build, start lbfleet-server on 127.0.0.1:8080 with var/lbfleet.db, print the URL and the admin login.
demo: build
	@bash scripts/demo.sh

# Formatting, lints, then every test tier that exists (unit + component).
test: deps lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

bench: bench-longpoll bench-dhcp

bench-longpoll: deps
	$(CARGO) run --release -p lbfleet-bench --bin bench-longpoll -- $(BENCH_ARGS)

# perfdhcp against lbfleet, Kea and dnsmasq in namespaces this target creates (root).
bench-dhcp: build
	bash bench/dhcp.sh $(BENCH_SECONDS)

clean:
	$(CARGO) clean
	rm -rf var
