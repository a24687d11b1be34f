#!/usr/bin/env bash
# `make demo`'s devops-api flow, run by scripts/demo.sh under scripts/with-postgres.sh
# (TEST_DATABASE_URL, TEST_DATABASE_SOCKET_DIR and TEST_DATABASE_PORT set): the API on a
# throwaway PostgreSQL, a tenant created with curl, its login used through psql, a
# re-PUT with an empty plan, a drifted grant repaired, the audit log.
set -euo pipefail
BIN="$1"; WORK="$2"
mkdir -p "$WORK"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*" >&2; "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
pretty() { python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin), indent=2))'; }

API_PORT=$(free_port); ADMIN_PORT=$(free_port)
TOKEN=demo-token-$(python3 -c 'import secrets; print(secrets.token_hex(12))')
TEAMB_TOKEN=teamb-token-$(python3 -c 'import secrets; print(secrets.token_hex(12))')
# ops may touch every tenant; teamb only tenants named teamb_*.
printf 'ops:%s\nteamb:%s:teamb_*\n' "$TOKEN" "$TEAMB_TOKEN" > "$WORK/tokens"
cat > "$WORK/devops-api.yaml" <<YAML
listen: 127.0.0.1:$API_PORT
admin_listen: 127.0.0.1:$ADMIN_PORT
database:
  url: $TEST_DATABASE_URL
auth:
  tokens_file: $WORK/tokens
YAML
RUST_LOG=warn "$BIN/devops-api" --config "$WORK/devops-api.yaml" > "$WORK/devops-api.log" 2>&1 &
API_PID=$!
trap 'kill $API_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
API="http://127.0.0.1:$API_PORT"
AUTH="Authorization: Bearer $TOKEN"
cat > "$WORK/acme.json" <<'JSON'
{
  "logins": [ { "name": "acme_app", "memberOf": "owner", "connectionLimit": 20 },
              { "name": "acme_report", "memberOf": "reader" } ],
  "extensions": [ "pgcrypto" ]
}
JSON

step "devops-api on a throwaway PostgreSQL; a tenant 'acme' planned, then created with curl"
show curl -sS -X PUT "$API/v1/tenants/acme?dryRun=true" -H "$AUTH" -H 'Content-Type: application/json' -d @"$WORK/acme.json" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("dry run:", len(d["plan"]), "statements"); [print("  ", s["sql"]) for s in d["plan"]]'
curl -sS -X PUT "$API/v1/tenants/acme" -H "$AUTH" -H 'Content-Type: application/json' -d @"$WORK/acme.json" -o "$WORK/created.json" -w 'HTTP %{http_code}\n'
python3 - "$WORK/created.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"applied {len(d['plan'])} statements; passwords returned once for:", ", ".join(c["login"] for c in d["credentials"]))
PY
APP_PASSWORD=$(python3 -c 'import json,sys; print([c["password"] for c in json.load(open(sys.argv[1]))["credentials"] if c["login"]=="acme_app"][0])' "$WORK/created.json")
REPORT_PASSWORD=$(python3 -c 'import json,sys; print([c["password"] for c in json.load(open(sys.argv[1]))["credentials"] if c["login"]=="acme_report"][0])' "$WORK/created.json")

step "the generated login, through psql (password over the Unix socket): a table in its schema, none in public"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$TEST_DATABASE_SOCKET_DIR" -p "$TEST_DATABASE_PORT" -d postgres)
PGPASSWORD="$APP_PASSWORD" "${PSQL[@]}" -U acme_app -c "CREATE TABLE acme.orders (id int PRIMARY KEY, total numeric); INSERT INTO acme.orders VALUES (1, 42.50);"
echo "acme_app created acme.orders"
PGPASSWORD="$APP_PASSWORD" "${PSQL[@]}" -U acme_app -c "CREATE TABLE public.nope (id int)" 2>&1 | sed 's/^/  /' || true
printf 'acme_report reads the table created after it: '
PGPASSWORD="$REPORT_PASSWORD" "${PSQL[@]}" -U acme_report -tA -c "SELECT total FROM acme.orders"

step "the same PUT again: an empty plan"
curl -sS -X PUT "$API/v1/tenants/acme" -H "$AUTH" -H 'Content-Type: application/json' -d @"$WORK/acme.json" -w '\nHTTP %{http_code}\n'

step "drift: the reader's USAGE on the schema revoked by hand; GET shows it, a PUT repairs it"
psql -X -q -h 127.0.0.1 -p "$TEST_DATABASE_PORT" -U postgres -d postgres -c "REVOKE USAGE ON SCHEMA acme FROM acme_reader"
curl -sS "$API/v1/tenants/acme" -H "$AUTH" | python3 -c 'import json,sys; print("drift:", json.dumps(json.load(sys.stdin)["drift"], indent=2))'
curl -sS -X PUT "$API/v1/tenants/acme" -H "$AUTH" -H 'Content-Type: application/json' -d @"$WORK/acme.json" \
    | python3 -c 'import json,sys; print("repaired:", [s["sql"] for s in json.load(sys.stdin)["plan"]])'

step "drift the other way: an outsider given SELECT on the tenant's table and made a member of its owner role; a PUT takes both back"
psql -X -q -h 127.0.0.1 -p "$TEST_DATABASE_PORT" -U postgres -d postgres \
    -c "CREATE ROLE outsider NOLOGIN; GRANT SELECT ON acme.orders TO outsider; GRANT acme_owner TO outsider"
curl -sS "$API/v1/tenants/acme" -H "$AUTH" | python3 -c 'import json,sys; print("drift:", [s["sql"] for s in json.load(sys.stdin)["drift"]])'
curl -sS -X PUT "$API/v1/tenants/acme" -H "$AUTH" -H 'Content-Type: application/json' -d @"$WORK/acme.json" \
    | python3 -c 'import json,sys; print("converged:", [s["sql"] for s in json.load(sys.stdin)["plan"]])'

step "a hostile name: 422, no SQL"
curl -sS -X PUT "$API/v1/tenants/acme%22%3B%20DROP%20ROLE%20postgres" -H "$AUTH" -H 'Content-Type: application/json' -d '{}' | pretty

step "names that are not a tenant's: another tenant's schema (422), a role made by hand (409), another team's tenant (403)"
curl -sS -X PUT "$API/v1/tenants/mallory" -H "$AUTH" -H 'Content-Type: application/json' -d '{"schema": "acme"}' \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["status"], d["errors"])'
psql -X -q -h 127.0.0.1 -p "$TEST_DATABASE_PORT" -U postgres -d postgres -c "CREATE ROLE mallory_app LOGIN"
curl -sS -X PUT "$API/v1/tenants/mallory" -H "$AUTH" -H 'Content-Type: application/json' \
    -d '{"logins": [{"name": "mallory_app", "memberOf": "owner"}]}' \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["status"], d["detail"])'
curl -sS -X PUT "$API/v1/tenants/acme" -H "Authorization: Bearer $TEAMB_TOKEN" -H 'Content-Type: application/json' -d @"$WORK/acme.json" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["status"], d["detail"])'

step "revoke ends the tenant's open sessions; drop removes what it created, and only that"
PGPASSWORD="$REPORT_PASSWORD" "${PSQL[@]}" -U acme_report -c "SELECT pg_sleep(30)" >/dev/null 2>&1 &
SESSION=$!
for _ in $(seq 50); do
    psql -X -qtA -h 127.0.0.1 -p "$TEST_DATABASE_PORT" -U postgres -d postgres \
        -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'acme_report'" | grep -q '^1$' && break
    sleep 0.1
done
curl -sS -X DELETE "$API/v1/tenants/acme?mode=revoke" -H "$AUTH" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("revoked:", len(d["plan"]), "statements,", d["terminatedSessions"], "session(s) ended")'
wait $SESSION 2>/dev/null || echo "acme_report's session was ended"
curl -sS -X DELETE "$API/v1/tenants/acme?mode=drop" -H "$AUTH" \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); print("dropped:", [s["sql"] for s in d["plan"]])'
printf 'the outsider role, not the tenant'"'"'s, is still there: '
psql -X -qtA -h 127.0.0.1 -p "$TEST_DATABASE_PORT" -U postgres -d postgres -c "SELECT count(*) FROM pg_roles WHERE rolname = 'outsider'"

step "the audit log"
curl -sS "$API/v1/audit?tenant=acme" -H "$AUTH" > "$WORK/audit.json"
python3 - "$WORK/audit.json" <<'PY'
import json, sys
for e in json.load(open(sys.argv[1])):
    dry = "dry run" if e["dryRun"] else "applied" if e["outcome"] == "applied" else e["outcome"]
    print(f"  {e['at'][:19]}  {e['actor']:<4} {e['action']:<6} {dry:<9} {len(e['plan'])} statements  request {e['requestId'][:8]}")
PY
