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

step "an apply that would create keys with nowhere to deliver them refuses (exit 1, nothing written)"
set +e; show "$PJ" apply --config config.yaml; code=$?; set -e
echo "exit code: $code"

step "first apply: creates the four clients; their API keys are delivered into a 0600 Secret manifest"
show "$PJ" apply --config config.yaml --api-keys-out api-keys.yaml --api-keys-namespace aggregation
printf 'keys file: %s, Secret keys: %s\n' "$(stat -c '%A %n' api-keys.yaml)" \
    "$(python3 -c 'import re,sys; t=open("api-keys.yaml").read(); print(", ".join(re.findall(r"^  ([a-z0-9.-]+):", t.split("stringData:")[1], re.M)))')"
python3 - <<'PY'
import sqlite3
rows = sqlite3.connect("provisioner.db").execute(
    "SELECT client_name, delivered_to FROM api_key_deliveries ORDER BY client_name").fetchall()
for name, target in rows:
    print(f"  {name:<22} delivered to {target}")
PY

step "second apply: nothing to do, nothing new to deliver (the keys file is left as it is)"
before=$(sha256sum api-keys.yaml)
show "$PJ" apply --config config.yaml --api-keys-out api-keys.yaml --output json
[ "$before" = "$(sha256sum api-keys.yaml)" ] && echo "keys file unchanged"

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
show "$PJ" apply --config config.yaml --api-keys-out api-keys.yaml
show "$PJ" apply --config config.yaml --api-keys-out api-keys.yaml --repair --output json

step "audit trail (provisioning_runs)"
python3 - <<'PY'
import sqlite3
for row in sqlite3.connect("provisioner.db").execute(
        "SELECT substr(run_id, 1, 8), outcome, json_array_length(summary_json, '$.created') FROM provisioning_runs ORDER BY started_at"):
    print("run %s  outcome=%-16s created=%s" % row)
PY
cd - >/dev/null

# ---------------------------------------------------------------------------------------
# oc-sync-job: a fake Open Connectors tenant and a fake Compass Director, on loopback.
# ---------------------------------------------------------------------------------------
step "oc-sync-job: Open Connectors instances kept in step with Compass applications (local fakes of both)"
"$BIN/examples/oc_sync_demo" --job "$BIN/oc-sync-job" --dir "$WORK/oc-sync"

# ---------------------------------------------------------------------------------------
# devops-api: a throwaway PostgreSQL, the API, a tenant by curl, its login through psql.
# ---------------------------------------------------------------------------------------
step "devops-api: tenant databases on PostgreSQL, declared over HTTP"
scripts/with-postgres.sh scripts/demo-devops-api.sh "$BIN" "$WORK/devops-api"

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
    secrets: ["acme-connector-secret"]
    aggregator_secrets: ["acme-aggregator-secret"]
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

# ---------------------------------------------------------------------------------------
# generic-consumer: a local Kafka-protocol broker, two domains, one instance per domain.
# ---------------------------------------------------------------------------------------
step "generic-consumer: a tansu broker on loopback, one consumer per domain writing jsonl"
K_PORT=$(free_port)
"${TANSU:-tansu}" broker --listener-url "tcp://127.0.0.1:$K_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$K_PORT" --storage-engine memory://tansu/ \
    > "$WORK/tansu.log" 2>&1 &
PIDS+=($!)
python3 - "$K_PORT" <<'PY'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("tansu did not start")
PY
echo "broker ready on 127.0.0.1:$K_PORT"
mkdir -p "$WORK/consumers"
cd "$WORK/consumers"
# The ConfigMap every consumer mounts as .env (the seed's form of IGNORE_EVENTS included).
cat > .env <<ENV
WRITE_ENV=local
SINK=jsonl
JSONL_DIR=./out
KAFKA_BOOTSTRAP_LOCAL=127.0.0.1:$K_PORT
BQ_TABLE_DELIVERY=delivery_events
IMPORT_PATH_DELIVERY=contracts.delivery.delivery_events_v10
IMPORT_OBJECT_DELIVERY=DeliveryEventsV10Topic
IGNORE_EVENTS_DELIVERY='"[\"ShippingPricesEstimatedEvent\"]"'
CONSUME_ENV_DELIVERY=local
GROUP_ID_DELIVERY=delivery-consumer
BQ_TABLE_PAYMENTS=payment_events
IMPORT_PATH_PAYMENTS=contracts.payments.payment_events_v2
IMPORT_OBJECT_PAYMENTS=PaymentEventsV2Topic
IGNORE_EVENTS_PAYMENTS=[]
CONSUME_ENV_PAYMENTS=local
GROUP_ID_PAYMENTS=payments-consumer
ENV
GC="$BIN/generic-consumer"

step "example events of both domains (protobuf for delivery, JSON for payments)"
"$BIN/examples/produce" DELIVERY --count 400 --partitions 3
"$BIN/examples/produce" PAYMENTS --count 300 --partitions 3

step "--check: the delivery consumer's context and contract, and both of its topics on the broker"
show "$GC" DELIVERY --check

step "one instance per domain, until every message is consumed; then SIGTERM"
GC_PIDS=()
for domain in DELIVERY PAYMENTS; do
    port=$(free_port)
    ADMIN_LISTEN="127.0.0.1:$port" RUST_LOG=info LOG_FORMAT=text "$GC" "$domain" \
        > "$WORK/consumer-$domain.log" 2>&1 &
    GC_PIDS+=($!); PIDS+=($!)
    wait_ready "http://127.0.0.1:$port/readyz"
    echo "generic-consumer $domain ready (metrics on 127.0.0.1:$port/metrics)"
    eval "ADMIN_$domain=$port"
done
python3 - "$ADMIN_DELIVERY" 400 "$ADMIN_PAYMENTS" 300 <<'PY'
import re, sys, time, urllib.request
pairs = list(zip(sys.argv[1::2], map(int, sys.argv[2::2])))
def consumed(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    m = re.search(r"^consumer_messages_consumed_total (\d+)", text, re.M)
    return int(m.group(1)) if m else 0
for _ in range(600):
    if all(consumed(p) >= n for p, n in pairs):
        sys.exit(0)
    time.sleep(0.1)
sys.exit("the consumers did not consume every message within a minute")
PY
sleep 1.5  # one more commit interval
for pid in "${GC_PIDS[@]}"; do kill -TERM "$pid"; done
for pid in "${GC_PIDS[@]}"; do wait "$pid"; echo "exit code: $?"; done
for domain in DELIVERY PAYMENTS; do
    echo "$domain: $(grep -oE 'stopped consumed=.*' "$WORK/consumer-$domain.log" | sed -E 's/\x1b\[[0-9;]*m//g')"
done

step "what landed: rows per table and event (ShippingPricesEstimatedEvent was ignored)"
python3 - <<'PY'
import collections, json, pathlib
for path in sorted(pathlib.Path("out").glob("*.jsonl")):
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    print(f"{path.name}: {len(rows)} rows, {len({r['insert_id'] for r in rows})} distinct insert ids")
    for event, n in sorted(collections.Counter(r["event_name"] for r in rows).items()):
        print(f"  {n:>5}  {event}")
row = json.loads(pathlib.Path("out/delivery_events.jsonl").read_text().splitlines()[0])
print("one delivery row:")
print("  " + json.dumps(row, indent=2).replace("\n", "\n  "))
PY

step "the delivery domain into BigQuery (the Storage Write API, the default) against a local fake of Google's endpoints"
"$BIN/examples/bigquery_fake" --dir "$WORK/bigquery" > "$WORK/bigquery.log" 2>&1 &
FAKE_PID=$!; PIDS+=($FAKE_PID)
for _ in $(seq 100); do [ -s "$WORK/bigquery/endpoint" ] && break; sleep 0.1; done
head -1 "$WORK/bigquery.log"
port=$(free_port)
ADMIN_LISTEN="127.0.0.1:$port" RUST_LOG=info LOG_FORMAT=text \
    SINK=bigquery BIGQUERY_ENDPOINT="$(cat "$WORK/bigquery/endpoint")" \
    BIGQUERY_STORAGE_ENDPOINT="$(cat "$WORK/bigquery/storage-endpoint")" \
    BQ_PROJECT_LOCAL=demo-project BQ_DATASET_LOCAL=events BQ_CREATE_TABLE_DELIVERY=true \
    GOOGLE_APPLICATION_CREDENTIALS="$WORK/bigquery/service-account.json" \
    GROUP_ID_DELIVERY=delivery-bigquery \
    "$GC" DELIVERY > "$WORK/consumer-bigquery.log" 2>&1 &
BQ_PID=$!; PIDS+=($BQ_PID)
wait_ready "http://127.0.0.1:$port/readyz"
python3 - "$port" 400 <<'PY'
import re, sys, time, urllib.request
port, want = sys.argv[1], int(sys.argv[2])
def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    m = re.search(rf"^{name} (\d+)", text, re.M)
    return int(m.group(1)) if m else 0
for _ in range(600):
    if metric("consumer_messages_consumed_total") >= want:
        break
    time.sleep(0.1)
else:
    sys.exit("the consumer did not consume every message within a minute")
PY
sleep 1.5
kill -TERM "$BQ_PID"; wait "$BQ_PID"; echo "exit code: $?"
echo "DELIVERY: $(grep -oE 'stopped consumed=.*' "$WORK/consumer-bigquery.log" | sed -E 's/\x1b\[[0-9;]*m//g')"
kill -TERM "$FAKE_PID"; wait "$FAKE_PID" || true
tail -n +2 "$WORK/bigquery.log" | head -40
cd - >/dev/null
