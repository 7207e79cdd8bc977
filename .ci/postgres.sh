# Sourced by .ci/run (or by hand: `source .ci/postgres.sh && start_test_postgres`): a throw-away
# PostgreSQL cluster for the distributed-study tests, on 127.0.0.1 only, in a temporary directory,
# stopped and deleted on exit. Exports RANKADAPTOR_TEST_POSTGRES_URL for the tests.
# PostgreSQL refuses to run as root, so as root the server commands run as the `postgres` user.

install_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    fi
}

_as_pg() {  # run a server command as the postgres user when we are root
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_test_postgres() {
    if [ -n "${PG_TEST_DIR:-}" ] && [ -d "$PG_TEST_DIR" ]; then
        _as_pg "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_TEST_DIR"
        echo "postgres: test cluster stopped and removed"
    fi
    unset PG_TEST_DIR RANKADAPTOR_TEST_POSTGRES_URL
}

start_test_postgres() {
    install_postgres
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    PG_TEST_DIR=$(mktemp -d /tmp/rankadaptor-pg.XXXXXX)
    trap stop_test_postgres EXIT
    local port password
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    printf '%s\n' "$password" > "$PG_TEST_DIR/pwfile"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$PG_TEST_DIR"; fi
    # local socket (in the private temp dir) trusted, TCP on loopback by password
    _as_pg "$PG_BIN/initdb" -D "$PG_TEST_DIR/data" -U postgres --pwfile="$PG_TEST_DIR/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 >"$PG_TEST_DIR/initdb.log"
    _as_pg "$PG_BIN/pg_ctl" -D "$PG_TEST_DIR/data" -l "$PG_TEST_DIR/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TEST_DIR" start >/dev/null
    _as_pg "$PG_BIN/createdb" -h "$PG_TEST_DIR" -p "$port" -U postgres rankadaptor_test
    export RANKADAPTOR_TEST_POSTGRES_URL="postgresql://postgres:$password@127.0.0.1:$port/rankadaptor_test"
    echo "postgres: test cluster on 127.0.0.1:$port (data in $PG_TEST_DIR)"
}
