#!/usr/bin/env bash
# A PostgreSQL server for the hub service's tests: Debian's package, its default cluster
# started, a role colab_guard (password colab_guard) owning the database colab_guard_hub_test.
# Idempotent: run it again and it only starts what is stopped.
set -euo pipefail
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql
fi
# The newest cluster Debian made (e.g. "15 main"); start it if it is down.
read -r version cluster port status _ < <(pg_lsclusters -h | sort -V | tail -1)
if [ "$status" != "online" ]; then
    $sudo pg_ctlcluster "$version" "$cluster" start
fi
if [ "$port" != 5432 ]; then
    echo "postgres.sh: the cluster $version/$cluster listens on $port, not 5432" >&2
    exit 1
fi
psql_as_postgres() { $sudo -u postgres psql -v ON_ERROR_STOP=1 -qAt "$@"; }
[ "$(id -u)" = 0 ] && psql_as_postgres() { su postgres -c "psql -v ON_ERROR_STOP=1 -qAt $(printf '%q ' "$@")"; }
if [ "$(psql_as_postgres -c "SELECT 1 FROM pg_roles WHERE rolname = 'colab_guard'")" != 1 ]; then
    psql_as_postgres -c "CREATE ROLE colab_guard LOGIN PASSWORD 'colab_guard'"
fi
if [ "$(psql_as_postgres -c "SELECT 1 FROM pg_database WHERE datname = 'colab_guard_hub_test'")" != 1 ]; then
    psql_as_postgres -c "CREATE DATABASE colab_guard_hub_test OWNER colab_guard"
fi
