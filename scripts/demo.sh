#!/usr/bin/env bash
# Starts lbfleet-server for a demo: database under var/, admin created on first run, an example cluster and two
# pre-registered nodes so the API has something to show. Stops the server on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

server=target/release/lbfleet-server
listen=${LBFLEET_LISTEN:-127.0.0.1:8080}
url="http://$listen"
mkdir -p var
export LBFLEET_DATABASE=${LBFLEET_DATABASE:-sqlite://var/lbfleet.db}

if curl -fsS -o /dev/null "$url/healthz" 2>/dev/null; then
  echo "demo: something already answers on $url; stop it or set LBFLEET_LISTEN=127.0.0.1:PORT" >&2
  exit 1
fi

"$server" serve --listen "$listen" --initial-admin-password-file var/initial-admin-password >var/server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$url/healthz" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { echo "demo: the server exited; see var/server.log:" >&2; tail -20 var/server.log >&2; exit 1; }
  sleep 0.1
done

# Example data, once: a cluster with one service and two nodes (active + backup).
if [ ! -f var/demo-seeded ]; then
  token=$("$server" token create --user admin --name demo-seed --expires-in 10m 2>/dev/null)
  api() { curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@" >/dev/null; }
  api -X PUT "$url/api/v1/clusters/ext" -d '{
    "vrid": 51, "interface": "eth0", "advert_interval_ms": 100, "vips": ["198.18.0.10/32"],
    "services": [{"vip": "198.18.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr", "forward": "nat",
                  "check": {"kind": "http", "path": "/healthz", "expect_status": 200},
                  "real_servers": [{"address": "198.18.2.1", "port": 80, "weight": 1},
                                   {"address": "198.18.2.2", "port": 80, "weight": 1}]}]}'
  api -X POST "$url/api/v1/nodes" -d '{"mac": "52:54:00:12:34:01", "hostname": "lb-01"}'
  api -X POST "$url/api/v1/nodes" -d '{"mac": "52:54:00:12:34:02", "hostname": "lb-02"}'
  api -X POST "$url/api/v1/nodes/lb-01/assign" -d '{"cluster": "ext", "role": "active"}'
  api -X POST "$url/api/v1/nodes/lb-02/assign" -d '{"cluster": "ext", "role": "backup"}'
  touch var/demo-seeded
fi

echo
echo "lbfleet-server is running (log: var/server.log, database: $LBFLEET_DATABASE)"
echo "  URL:    $url/"
if [ -f var/initial-admin-password ]; then
  echo "  login:  admin / $(cat var/initial-admin-password)"
else
  echo "  login:  admin (reset the password with: $server user passwd admin --database $LBFLEET_DATABASE)"
fi
echo "  try:    curl -s -c var/cookies -H 'Content-Type: application/json' -d '{\"username\":\"admin\",\"password\":\"...\"}' $url/api/v1/login"
echo "  or:     TOKEN=\$($server token create --user admin --name demo --database $LBFLEET_DATABASE) && curl -s -H \"Authorization: Bearer \$TOKEN\" $url/api/v1/clusters"
echo "Press Ctrl-C to stop."
wait $pid
