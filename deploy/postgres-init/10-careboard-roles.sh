#!/bin/sh
# Run once by the postgres image on a new volume (docker-entrypoint-initdb.d): the
# login the Careboard server uses, a member of the application role that migration
# 0008 grants (append and read events, keep the read models; never rewrite events).
# The image's POSTGRES_USER owns the schema and runs the migrations. The password comes
# from CAREBOARD_SERVER_DB_PASSWORD (.env), never from this file.
set -eu
psql -v ON_ERROR_STOP=1 -v pw="$CAREBOARD_SERVER_DB_PASSWORD" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
create role careboard_app nologin;
create role careboard_server login password :'pw'
    nosuperuser nocreatedb nocreaterole in role careboard_app;
alter role careboard_server set statement_timeout = '30s';
SQL
