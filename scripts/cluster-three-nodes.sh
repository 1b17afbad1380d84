#!/usr/bin/env bash
# Three Ferry nodes on one machine sharing one PostgreSQL database (cluster mode), as in
# docs/cluster.md: each node listens on a port of its own (8081, 8082, 8083), all share the
# schema SCHEMA (default `ferry_cluster`, created when missing) of DATABASE_URL, and one small
# receiver on 127.0.0.1:8099 prints what they deliver. Send events to any node; stop one with
# `kill -TERM` (graceful) or `kill -KILL` (its jobs go to the others when its leases end) and
# start it again with the line this script prints. Ctrl-C stops everything.
#   scripts/cluster-three-nodes.sh ./target/release/ferry
# Usage: cluster-three-nodes.sh BIN   (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test;
#        SCHEMA; FERRY_SECRET_KEY and FERRY_API_TOKEN, made up for this run when unset)
set -euo pipefail
usage="usage: $0 BIN"
bin=${1:?$usage}
[ -x "$bin" ] || { echo "$0: $bin is not an executable Ferry binary" >&2; exit 2; }
command -v psql > /dev/null || { echo "$0: needs psql (to create the schema)" >&2; exit 2; }
command -v python3 > /dev/null || { echo "$0: needs python3 (the receiver)" >&2; exit 2; }
db=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
schema=${SCHEMA:-ferry_cluster}
case "$schema" in '' | *[!a-z0-9_]*) echo "$0: SCHEMA must be lower-case letters, digits and _" >&2; exit 2 ;; esac
# Every node must have the same key (it seals the secrets of objects made through the API)
# and the same token.
export FERRY_SECRET_KEY=${FERRY_SECRET_KEY:-$(head -c 32 /dev/urandom | base64)}
export FERRY_API_TOKEN=${FERRY_API_TOKEN:-$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')}
export FERRY_DATABASE_URL="$db?options=-csearch_path%3D$schema"
psql -q "$db" -c "CREATE SCHEMA IF NOT EXISTS $schema"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/receiver.py" << 'EOF'
import http.server
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print("received", body.decode(errors="replace"), flush=True)
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8099), Receiver).serve_forever()
EOF
python3 "$work/receiver.py" &
pids+=($!)
cat > "$work/ferry.yaml" << 'EOF'
settings: { allow_private_destinations: true, lease: 10s }
sources: [ { id: shop, kind: webhook, verify: { scheme: none } } ]
destinations: [ { id: crm, kind: http, url: "http://127.0.0.1:8099/", concurrency: 6 } ]
flows: [ { id: orders, on: { source: shop }, steps: [ { deliver: [crm] } ] } ]
EOF
for n in 1 2 3; do
  "$bin" serve --config "$work/ferry.yaml" --node-id "node-$n" --listen "127.0.0.1:808$n" \
    > "$work/node-$n.out" 2> "$work/node-$n.log" &
  pids+=($!)
  echo "node-$n: pid $!, http://127.0.0.1:808$n, log $work/node-$n.log"
done
cat << EOF

Three nodes share the schema $schema. Send an event to any of them:
  curl -sS http://127.0.0.1:8082/in/shop -H 'content-type: application/json' -d '{"type":"order.created","n":1}'
See the nodes and their work (the token is $FERRY_API_TOKEN):
  curl -sS -H "authorization: Bearer $FERRY_API_TOKEN" http://127.0.0.1:8081/api/v1/deliveries
Start a stopped node again (same environment):
  FERRY_SECRET_KEY='$FERRY_SECRET_KEY' FERRY_API_TOKEN='$FERRY_API_TOKEN' FERRY_DATABASE_URL='$FERRY_DATABASE_URL' \\
    $bin serve --config $work/ferry.yaml --node-id node-1 --listen 127.0.0.1:8081
Ctrl-C stops everything.
EOF
wait
