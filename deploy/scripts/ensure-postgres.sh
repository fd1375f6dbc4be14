#!/usr/bin/env bash
# Ensure a reachable PostgreSQL for the gateway and print its URL as the LAST
# line of stdout (everything else goes to stderr).
#
#  * DATABASE_URL set   -> only check it is reachable, then print it.
#  * DATABASE_URL unset -> ensure Debian's `postgresql` is installed, a cluster
#    exists and runs, a login role gateway/gateway with CREATEDB and a database
#    `gateway` owned by it exist; print
#      postgresql://gateway:gateway@127.0.0.1:<port>/gateway
#
# Idempotent; a no-op (well under a second) when everything is already up.
# Env knobs: PG_ROLE, PG_PASSWORD, PG_DB, PG_CLUSTER (default main), PG_WAIT (s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PG_ROLE="${PG_ROLE:-gateway}"
PG_PASSWORD="${PG_PASSWORD:-gateway}"
PG_DB="${PG_DB:-gateway}"
PG_CLUSTER="${PG_CLUSTER:-main}"
PG_WAIT="${PG_WAIT:-30}"

log() { echo "ensure-postgres: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- reachability
check_url() {
  local url="$1" py=""
  if command -v psql >/dev/null 2>&1; then
    PGCONNECT_TIMEOUT=5 psql "$url" -XqAt -v ON_ERROR_STOP=1 -c 'select 1' >/dev/null 2>&1 && return 0
  fi
  for cand in "$ROOT/.venv/bin/python" python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import asyncpg' 2>/dev/null; then py="$cand"; break; fi
  done
  [ -n "$py" ] || return 1
  "$py" - "$url" <<'PY' >/dev/null 2>&1
import asyncio, sys, asyncpg
async def main(url):
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.fetchval("select 1")
    finally:
        await conn.close()
asyncio.run(main(sys.argv[1]))
PY
}

if [ -n "${DATABASE_URL:-}" ]; then
  if ! command -v psql >/dev/null 2>&1 && [ ! -x "$ROOT/.venv/bin/python" ] \
     && ! python3 -c 'import asyncpg' 2>/dev/null; then
    die "DATABASE_URL is set but neither psql nor asyncpg is available to check it (run 'make venv')"
  fi
  deadline=$((SECONDS + PG_WAIT))
  until check_url "$DATABASE_URL"; do
    [ "$SECONDS" -lt "$deadline" ] || die "DATABASE_URL is set but not reachable: $DATABASE_URL"
    sleep 1
  done
  log "using provided DATABASE_URL"
  echo "$DATABASE_URL"
  exit 0
fi

# ------------------------------------------------------------ privileges
if [ "$(id -u)" = 0 ]; then
  SUDO=()
  as_postgres() { runuser -u postgres -- "$@"; }
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
  as_postgres() { sudo -n -u postgres -- "$@"; }
else
  SUDO=()
  as_postgres() { "$@"; }   # maybe we *are* postgres; failures below say so
fi

# ------------------------------------------------------------ install
if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || [ ${#SUDO[@]} -gt 0 ] || die "postgresql is not installed and we are not root (set DATABASE_URL or install postgresql)"
  command -v apt-get >/dev/null 2>&1 || die "postgresql is not installed and apt-get is unavailable (set DATABASE_URL)"
  log "installing Debian postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql >&2
fi

# newest installed server version
PG_VER="$(ls -1 /usr/lib/postgresql | grep -E '^[0-9]+$' | sort -n | tail -n1)"
[ -n "$PG_VER" ] && [ -x "/usr/lib/postgresql/$PG_VER/bin/postgres" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql"

cluster_line() { pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VER" -v c="$PG_CLUSTER" '$1==v && $2==c'; }

# ------------------------------------------------------------ cluster
if [ -z "$(cluster_line)" ]; then
  log "creating cluster $PG_VER/$PG_CLUSTER"
  "${SUDO[@]}" pg_createcluster "$PG_VER" "$PG_CLUSTER" >&2
fi
PG_PORT="$(cluster_line | awk '{print $3}')"
status="$(cluster_line | awk '{print $4}')"
[ -n "$PG_PORT" ] || die "could not determine port of cluster $PG_VER/$PG_CLUSTER"

if [ "$status" != online ]; then
  log "starting cluster $PG_VER/$PG_CLUSTER on port $PG_PORT"
  "${SUDO[@]}" pg_ctlcluster "$PG_VER" "$PG_CLUSTER" start >&2 \
    || die "pg_ctlcluster $PG_VER $PG_CLUSTER start failed; see /var/log/postgresql/postgresql-$PG_VER-$PG_CLUSTER.log"
fi

deadline=$((SECONDS + PG_WAIT))
until pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || die "cluster $PG_VER/$PG_CLUSTER not ready on 127.0.0.1:$PG_PORT after ${PG_WAIT}s"
  sleep 0.5
done

# ------------------------------------------------------------ role + database
URL="postgresql://${PG_ROLE}:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/${PG_DB}"

if ! check_url "$URL"; then
  log "ensuring role '$PG_ROLE' (LOGIN CREATEDB) and database '$PG_DB'"
  # quote_literal/quote_ident are applied server-side via psql variables.
  as_postgres psql -X -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 \
      -v role="$PG_ROLE" -v pw="$PG_PASSWORD" -v db="$PG_DB" >&2 <<'SQL'
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SQL
  check_url "$URL" || die "role/database created but $URL is still not reachable (check pg_hba.conf allows scram-sha-256 on 127.0.0.1)"
else
  # Fast path: role logs in; make sure it still may create throwaway databases.
  createdb="$(PGCONNECT_TIMEOUT=5 psql "$URL" -XqAt -c "select rolcreatedb from pg_roles where rolname = current_user" 2>/dev/null || echo t)"
  if [ "$createdb" != t ]; then
    as_postgres psql -X -q -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -v role="$PG_ROLE" >&2 <<'SQL'
SELECT format('ALTER ROLE %I CREATEDB', :'role') \gexec
SQL
  fi
fi

log "PostgreSQL $PG_VER/$PG_CLUSTER ready on 127.0.0.1:$PG_PORT"
echo "$URL"
