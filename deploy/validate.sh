#!/usr/bin/env bash
# Validates deploy/ as far as this machine allows: no container engine or cluster runs here,
# so images are not built and manifests are not applied. What is checked:
#   - every YAML file parses; manifests and compose file are structurally sound (check_manifests.py);
#   - every configuration deploy/ ships passes `sessiongate check-config` (dummy secrets);
#   - the systemd unit passes `systemd-analyze verify`;
#   - nginx.conf passes `nginx -t` (upstream host names mapped to loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SESSIONGATE_BIN:-${CARGO_TARGET_DIR:-target}/debug/sessiongate}
[ -x "$bin" ] || cargo build -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml
python3 deploy/check_manifests.py "$work"

# Signing keys must be 24 bytes or more (Standard Webhooks).
dummy_key=whsec_ZHVtbXktc2VjcmV0LWZvci1jaGVjay1jb25maWctb25seQ==
export SESSIONGATE_ADMIN_TOKEN=dummy-admin-token-for-check-config PATHORS_TOKEN="Bearer dummy" \
    SESSIONGATE_DATABASE_URL=postgres://sessiongate@127.0.0.1/sessiongate \
    AGNTIX_WEBHOOK_SECRET="$dummy_key" CRM_SIGNING_SECRET="$dummy_key" \
    WAREHOUSE_SIGNING_SECRET="$dummy_key" RECEIVER_SIGNING_SECRET="$dummy_key"
for config in "$work/k8s.toml" "$work/compose.toml" config/sessiongate.toml config/dev.toml; do
    "$bin" check-config --config "$config" > /dev/null
    echo "check-config OK: ${config#"$work/"}"
done

if command -v systemd-analyze > /dev/null; then
    unit="$work/sessiongate.service"
    sed "s|/usr/local/bin/sessiongate|$(realpath "$bin")|g; s|^User=.*|User=root|; s|^Group=.*|Group=root|; s|^EnvironmentFile=.*|EnvironmentFile=-/dev/null|" \
        deploy/systemd/sessiongate.service > "$unit"
    systemd-analyze verify "$unit"
    echo "systemd-analyze verify OK: deploy/systemd/sessiongate.service"
else
    echo "skipped: systemd-analyze not installed"
fi

if ! command -v nginx > /dev/null && [ "${CI:-}" = true ]; then
    (apt-get update -qq && apt-get install -y -qq nginx-light > /dev/null) || true
fi
if command -v nginx > /dev/null; then
    sed 's/gateway-[12]:8080/127.0.0.1:8080/' deploy/nginx.conf > "$work/nginx.conf"
    nginx -t -q -c "$work/nginx.conf" -g "pid $work/nginx.pid; error_log stderr;"
    echo "nginx -t OK: deploy/nginx.conf"
else
    echo "skipped: nginx not installed"
fi
