#!/usr/bin/env bash
# Archives one large recording through a real `sessiongate serve` and reports the gateway's
# peak RSS and the time from the webhook to the archived recording.ready at the receiver.
#
#   cargo build --release --bin sessiongate && bash bench/recording.sh [MiB]   # default 200
#
# The recording host is Python's http.server over a file of MiB random bytes; the receiver
# is a small Python server that notes when recording.ready arrives. Everything is on
# loopback and in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-200}
bin=${SESSIONGATE_BIN:-target/release/sessiongate}
[ -x "$bin" ] || { echo "build first: cargo build --release --bin sessiongate" >&2; exit 1; }
dir=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
pids=()
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
host_port=$(free_port); recv_port=$(free_port); gw_port=$(free_port)

mkdir -p "$dir/host"
head -c "$((mib * 1024 * 1024))" /dev/urandom > "$dir/host/rec.wav"
(cd "$dir/host" && exec python3 -m http.server "$host_port" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)

cat > "$dir/receiver.py" <<PY
import http.server, json, time, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['content-length']))
        e = json.loads(body)
        if e.get('type') == 'recording.ready':
            a = e['session']['recording']['archive']
            open(sys.argv[2], 'w').write(json.dumps({'at': time.time(), 'archive': a}))
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
PY
python3 "$dir/receiver.py" "$recv_port" "$dir/arrived.json" &
pids+=($!)

cat > "$dir/gate.toml" <<TOML
[server]
listen = "127.0.0.1:$gw_port"
[storage]
url = "sqlite://$dir/gate.db"
[recordings]
store = "file://$dir/recordings"
allow_private_networks = true
[[sources]]
name = "pathors"
vendor = "pathors"
auth = { kind = "header", header = "Authorization", value = "bench-token-0123456789abcdef" }
[[targets]]
name = "receiver"
url = "http://127.0.0.1:$recv_port/"
include_raw = false
TOML
RUST_LOG=warn "$bin" serve --config "$dir/gate.toml" 2>"$dir/gate.log" &
gw=$!
pids+=($gw)
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
idle_kib=$(awk '/VmRSS/ {print $2}' "/proc/$gw/status")

now=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
body=$(printf '{"event":"recording.ready","sessionId":"bench-%s","timestamp":"%s","success":true,"recordingUrl":"http://127.0.0.1:%s/rec.wav"}' "$$" "$now" "$host_port")
start=$(python3 -c 'import time;print(time.time())')
curl -fs -o /dev/null -X POST "http://127.0.0.1:$gw_port/ingest/pathors" \
    -H 'Authorization: bench-token-0123456789abcdef' -H 'content-type: application/json' -d "$body"
for _ in $(seq 1 1200); do
    [ -s "$dir/arrived.json" ] && break
    sleep 0.05
done
[ -s "$dir/arrived.json" ] || { echo "recording.ready never arrived" >&2; cat "$dir/gate.log" >&2; exit 1; }
peak_kib=$(awk '/VmHWM/ {print $2}' "/proc/$gw/status")
python3 - "$dir/arrived.json" "$start" "$mib" "$idle_kib" "$peak_kib" "$dir/host/rec.wav" <<'PY'
import json, sys, hashlib
arrived = json.load(open(sys.argv[1]))
start, mib, idle, peak, path = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
a = arrived['archive']
h = hashlib.sha256(open(path, 'rb').read()).hexdigest()
assert a['status'] == 'archived', a
assert a['sha256'] == h and a['bytes'] == mib * 1024 * 1024, (a, h)
took = arrived['at'] - start
print(f"| recording archived | {mib} MiB, sha256 verified |")
print(f"| webhook -> archived recording.ready at the receiver | {took * 1000:.0f} ms ({mib / took:.0f} MiB/s) |")
print(f"| gateway RSS idle / peak | {idle / 1024:.1f} MiB / {peak / 1024:.1f} MiB |")
PY
