# Sourced by scripts/test: a throwaway PostgreSQL 15 cluster for the tests, on a free loopback
# port, data in a temporary directory, stopped and removed when the script exits. It exports
#   DPSS_TEST_POSTGRES_URL      the superuser URL of the cluster's `postgres` database
#   DPSS_TEST_PG_CTL            a pg_ctl for this cluster (the failover tests restart it)
#   DPSS_TEST_REQUIRE_POSTGRES  so a test that cannot reach it fails instead of skipping
# Debian's package is installed where it is missing (as root, with apt-get).

pg_bindir() {
  local dir
  for dir in "$(pg_config --bindir 2>/dev/null)" /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

start_postgres() {
  local bin run=() port
  if ! bin="$(pg_bindir)"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "scripts/test: installing PostgreSQL 15 (Debian package postgresql-15)"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
      bin="$(pg_bindir)"
    else
      echo "scripts/test: PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql-15)" >&2
      return 1
    fi
  fi
  PG_TMP="$(mktemp -d /tmp/dpss-pg.XXXXXX)"
  if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root: the cluster belongs to the package's unprivileged user.
    chown postgres "$PG_TMP"
    run=(runuser -u postgres --)
  fi
  "${run[@]}" "$bin/initdb" -D "$PG_TMP/data" --auth=trust -U postgres >"$PG_TMP/initdb.log" 2>&1 \
    || { cat "$PG_TMP/initdb.log" >&2; return 1; }
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  cat >"$PG_TMP/pg_ctl" <<EOF
#!/usr/bin/env bash
exec ${run[*]} "$bin/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -o "-p $port -k $PG_TMP -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" "\$@"
EOF
  chmod 755 "$PG_TMP/pg_ctl"
  "$PG_TMP/pg_ctl" -w start >/dev/null || { cat "$PG_TMP/server.log" >&2; return 1; }
  export DPSS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export DPSS_TEST_PG_CTL="$PG_TMP/pg_ctl"
  export DPSS_TEST_REQUIRE_POSTGRES=1
  echo "scripts/test: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $PG_TMP)"
}

stop_postgres() {
  if [ -n "${PG_TMP:-}" ] && [ -x "$PG_TMP/pg_ctl" ]; then
    "$PG_TMP/pg_ctl" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$PG_TMP"
  fi
}
