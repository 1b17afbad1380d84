# Sourced by the measuring scripts: `ingest_fixture DIR` writes DIR/ferry.yaml, the bench's
# ingest-only config (no flow takes events of source `bench`), and DIR/body.json, a 1 KiB
# JSON event of type `bench.event`.
ingest_fixture() {
  cat > "$1/ferry.yaml" <<'YAML'
settings: { allow_private_destinations: true }
sources:
  - { id: bench, kind: webhook, verify: { scheme: none } }
  - { id: elsewhere, kind: webhook, verify: { scheme: none } }
destinations:
  - { id: d0, kind: http, url: "http://127.0.0.1:9/", concurrency: 64 }
flows:
  - { id: fan-out, on: { source: elsewhere }, steps: [ { deliver: [d0] } ] }
YAML
  local head='{"type":"bench.event","seq":1,"sent_us":1,"pad":"'
  local pad
  pad=$(printf 'x%.0s' $(seq 1 $((1024 - ${#head} - 2))))
  printf '%s%s"}' "$head" "$pad" > "$1/body.json"
}
