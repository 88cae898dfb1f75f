# Sourced by the bench scripts: a private PostgreSQL of the distribution in a temporary
# directory ($work), run as the `postgres` user when run as root, listening on a Unix
# socket there only ($socket, for a URL's host). The caller's EXIT trap calls
# stop_private_postgres.
pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
work="$(mktemp -d)"
chmod 755 "$work"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"
socket="${work//\//%2F}"

# Runs one statement in database $1, printing its rows unaligned.
sql() { as_postgres "$pg_bin/psql" -h "$work" -U postgres -d "$1" -Atqc "$2"; }

start_private_postgres() {
    as_postgres "$pg_bin/initdb" -A trust -U postgres -D "$work/pg" >/dev/null
    as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
        -o "-k $work -c listen_addresses='' -c max_connections=200" start >/dev/null
}

stop_private_postgres() {
    as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
