#!/bin/sh
# The official postgres image's interface, as far as compose.yaml uses it: POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, and the scripts in
# /docker-entrypoint-initdb.d/ run once, on an empty data folder, as POSTGRES_USER.
set -eu
if [ "$(id -u)" = 0 ]; then  # like the official image: fix the volume's owner, then drop to postgres
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as in the official image
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" ${POSTGRES_INITDB_ARGS:-}
  rm -f "$pwfile"
  echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
  # during initialisation the server listens on a private socket only: the healthcheck (pg_isready on
  # the default socket) stays red until the real server below is up
  init_sock=$(mktemp -d)
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k $init_sock" -w start
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) PGHOST=$init_sock PGPASSWORD=$POSTGRES_PASSWORD sh "$f" ;;
      *.sql) PGHOST=$init_sock PGPASSWORD=$POSTGRES_PASSWORD psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -f "$f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec postgres -c listen_addresses='*' "$@"
