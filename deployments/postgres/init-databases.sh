#!/bin/sh
# Runs once, when the PostgreSQL volume is empty: the app's database is POSTGRES_DB; Prefect gets its own.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE prefect OWNER "$POSTGRES_USER";
SQL
