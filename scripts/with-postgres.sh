#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL on a free loopback port.
#
#   scripts/with-postgres.sh CMD [ARGS...]
#
# Installs the Debian `postgresql` package when its server binaries are missing, creates
# a cluster in a temporary directory (trust auth, fsync off: it is thrown away), starts it
# on 127.0.0.1:<free port>, exports TEST_DATABASE_URL (a superuser URL; tests create their
# own databases from it) and TEST_DATABASE_SOCKET_DIR / _PORT / _LOG, runs CMD, and stops and deletes the cluster whatever happens.
set -euo pipefail

pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
    fi
}

PGBIN=$(pg_bindir)
if [ -z "$PGBIN" ]; then
    echo "with-postgres: PostgreSQL server not found; installing it with apt-get" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    PGBIN=$(pg_bindir)
    [ -n "$PGBIN" ] || { echo "with-postgres: postgresql installed but no server binaries found" >&2; exit 1; }
fi

# initdb and postgres refuse to run as root: use the postgres account the package made.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    # setpriv execs in place (runuser would fork), so $! below is the server itself.
    AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
else
    AS_PG=()
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/platform-pg.XXXXXX")
chmod 755 "$WORK"
[ "$(id -u)" -eq 0 ] && chown postgres "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
PG_PID=""

cleanup() {
    if [ -n "$PG_PID" ] && kill -0 "$PG_PID" 2>/dev/null; then
        kill -INT "$PG_PID" 2>/dev/null || true   # fast shutdown
        for _ in $(seq 1 50); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PG_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

"${AS_PG[@]}" "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust --encoding=UTF8 --no-sync >"$WORK/initdb.log" 2>&1 \
    || { cat "$WORK/initdb.log" >&2; exit 1; }
# TCP on loopback trusts every role (the tests' superuser URL); the Unix socket asks
# every role but postgres for its password (SCRAM), so tests can prove that a login's
# password works, and that an old one stops working.
cat > "$WORK/data/pg_hba.conf" <<'HBA'
local all postgres trust
local all all scram-sha-256
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
HBA
"${AS_PG[@]}" "$PGBIN/postgres" -D "$WORK/data" -p "$PORT" -k "$WORK" \
    -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=300 -c shared_buffers=128MB >"$WORK/postgres.log" 2>&1 &
PG_PID=$!

for _ in $(seq 1 100); do
    if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres; then break; fi
    if ! kill -0 "$PG_PID" 2>/dev/null; then cat "$WORK/postgres.log" >&2; exit 1; fi
    sleep 0.1
done
"$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres || { cat "$WORK/postgres.log" >&2; exit 1; }

export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
# The Unix socket's directory and port (password logins), and the server's log (tests
# that turn log_statement on for their database read it).
export TEST_DATABASE_SOCKET_DIR="$WORK" TEST_DATABASE_PORT="$PORT" TEST_DATABASE_LOG="$WORK/postgres.log"
echo "with-postgres: PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT" >&2
set +e
"$@"
status=$?
set -e
exit $status
