#!/usr/bin/env bash
# `make demo`: each service's main flow, locally, on embedded defaults. Prints what happens.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/platform-target}/debug"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/platform-demo.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

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
