#!/usr/bin/env bash
# `make demo`: each service's main flow, locally, on embedded defaults. Prints what happens.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/platform-target}/debug"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/platform-demo.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
wait_ready() {  # URL: poll until 200, at most 20 s
    python3 - "$1" <<'PY'
import sys, time, urllib.request
for _ in range(200):
    try:
        if urllib.request.urlopen(sys.argv[1], timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit("not ready: " + sys.argv[1])
PY
}
get() { python3 -c 'import json, sys, urllib.request; print(json.dumps(json.load(urllib.request.urlopen(sys.argv[1])), indent=2))' "$1"; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

# ---------------------------------------------------------------------------------------
# provisioner-job: SQLite, an example config with four clients on two clusters.
# ---------------------------------------------------------------------------------------
step "provisioner-job: reconcile declared clients into the aggregation database (SQLite)"
cp examples/provisioner-job/config.yaml "$WORK/config.yaml"
cd "$WORK"
export RUST_LOG=warn
PJ="$BIN/provisioner-job"

step "create the schema, then seed the two clusters (clusters are managed outside the job)"
show "$PJ" migrate --config config.yaml
python3 - <<'PY'
import sqlite3
db = sqlite3.connect("provisioner.db")
db.executemany(
    "INSERT INTO cluster_configurations (cluster_id, host) VALUES (?, ?)",
    [("oxford-production", "https://aggregation.production.example"),
     ("oxford-staging", "https://aggregation.staging.example")],
)
db.commit()
print("seeded clusters:", [r[0] for r in db.execute("SELECT cluster_id FROM cluster_configurations")])
PY

step "plan: what an apply would do (exit 2 = changes pending)"
set +e; show "$PJ" plan --config config.yaml --detailed-exitcode; code=$?; set -e
echo "exit code: $code"

step "first apply: creates the four clients; new API keys go to a 0600 Secret manifest"
show "$PJ" apply --config config.yaml --api-keys-out api-keys.yaml --api-keys-namespace aggregation
printf 'keys file: %s, Secret keys: %s\n' "$(stat -c '%A %n' api-keys.yaml)" \
    "$(python3 -c 'import re,sys; t=open("api-keys.yaml").read(); print(", ".join(re.findall(r"^  ([a-z0-9.-]+):", t.split("stringData:")[1], re.M)))')"

step "second apply: nothing to do"
show "$PJ" apply --config config.yaml

step "drift and orphans: acme-bank renamed in the database, an undeclared client added by hand"
python3 - <<'PY'
import sqlite3
db = sqlite3.connect("provisioner.db")
db.execute("""UPDATE aggregator_configurations SET aggregator_info = 'Acme Bank (old name)'
              WHERE aggregator_id = (SELECT aggregator_id FROM client_configurations WHERE client_name = 'acme-bank')""")
db.execute("INSERT INTO aggregator_configurations VALUES ('manual-agg', 'Manual')")
db.execute("INSERT INTO client_configurations VALUES ('manual-client', 'manual-key', 'oxford-production', 'manual-agg')")
db.commit()
PY
show "$PJ" apply --config config.yaml
show "$PJ" apply --config config.yaml --repair --output json

step "audit trail (provisioning_runs)"
python3 - <<'PY'
import sqlite3
for row in sqlite3.connect("provisioner.db").execute(
        "SELECT substr(run_id, 1, 8), outcome, json_array_length(summary_json, '$.created') FROM provisioning_runs ORDER BY started_at"):
    print("run %s  outcome=%-16s created=%s" % row)
PY
cd - >/dev/null

# ---------------------------------------------------------------------------------------
# Gandalf: a cluster, an aggregator, two connectors.
# ---------------------------------------------------------------------------------------
step "gandalf: a cluster, an aggregator for tenant acme, two connectors"
C_GRPC=$(free_port); C_ADMIN=$(free_port); A_GRPC=$(free_port); A_ADMIN=$(free_port)
cat > "$WORK/cluster.yaml" <<YAML
listen: 127.0.0.1:$C_GRPC
admin_listen: 127.0.0.1:$C_ADMIN
tenants:
  acme:
    secrets: ["acme-aggregator-secret", "acme-connector-secret"]
YAML
cat > "$WORK/aggregator.yaml" <<YAML
logical_name: agg-1
tenant: acme
secret: acme-aggregator-secret
listen: 127.0.0.1:$A_GRPC
admin_listen: 127.0.0.1:$A_ADMIN
cluster: ["http://127.0.0.1:$C_GRPC"]
YAML
export RUST_LOG=info LOG_FORMAT=text
"$BIN/gandalf-cluster" --config "$WORK/cluster.yaml" > "$WORK/cluster.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$C_ADMIN/readyz"
echo "gandalf-cluster ready on 127.0.0.1:$C_GRPC (admin $C_ADMIN)"
"$BIN/gandalf-aggregator" --config "$WORK/aggregator.yaml" > "$WORK/aggregator.log" 2>&1 &
PIDS+=($!)
wait_ready "http://127.0.0.1:$A_ADMIN/readyz"
echo "gandalf-aggregator ready on 127.0.0.1:$A_GRPC; its start-up, step by step:"
grep -oE 'step [0-9]/5 \([A-Za-z ]+\): .*' "$WORK/aggregator.log" | sed -E 's/ (members|member|stored|logical_name)=.*//; s/^/  /'

export GANDALF_CONNECTOR_SECRET=acme-connector-secret
CONNECTOR="$BIN/examples/connector"
"$CONNECTOR" --endpoint "http://127.0.0.1:$A_GRPC" --name crm-1 --type crm --tenant acme --serve \
    > "$WORK/crm-1.log" 2>&1 &
PIDS+=($!)
sleep 0.5

step "billing-1 (an erp connector) sends a command for any crm connector, then an event"
"$CONNECTOR" --endpoint "http://127.0.0.1:$A_GRPC" --name billing-1 --type erp --tenant acme \
    --command crm:SYNC_CUSTOMERS --event orders:ORDER_CREATED --command nobody:PING --timeout-ms 300 || true

step "what crm-1 saw: the command (acknowledged) and the event"
sleep 0.3
cat "$WORK/crm-1.log"

step "a message with another tenant is refused (WRONG_TENANT back to the sender)"
"$CONNECTOR" --endpoint "http://127.0.0.1:$A_GRPC" --name rogue-1 --type erp --tenant acme \
    --wrong-tenant globex --linger-ms 500

step "a connector with a wrong secret is refused"
GANDALF_CONNECTOR_SECRET=wrong "$CONNECTOR" --endpoint "http://127.0.0.1:$A_GRPC" --name intruder --type erp \
    --tenant acme || true

step "the aggregator's connections (GET /v1/connections) and the cluster's event log (GET /v1/events)"
get "http://127.0.0.1:$A_ADMIN/v1/connections" | python3 -c 'import json,sys; [print("  %-9s %s" % (c["kind"], c.get("logical_name") or c.get("member"))) for c in json.load(sys.stdin)["connections"]]'
get "http://127.0.0.1:$C_ADMIN/v1/events?tenant=acme" | python3 -c 'import json,sys; [print("  %-14s %-16s from %s" % (e["topic"], e["event"], e["origin"])) for e in json.load(sys.stdin)["events"]]'
