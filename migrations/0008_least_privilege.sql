-- Least privilege. The schema belongs to the role that runs migrations (the owner);
-- the server connects as a login that is a member of careboard_app, which may read
-- everything, append events, and keep the read models, but may never change or remove
-- an event: the event log is the audit log, and the database itself refuses a rewrite.

-- A group role without login: each deployment grants it to the login its servers use
-- (the embedded default and the test harness create `careboard_server`). Roles belong
-- to the cluster, so several databases may race to create it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'careboard_app') THEN
        CREATE ROLE careboard_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO careboard_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO careboard_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO careboard_app;
-- Tables of later migrations get the same grants; an append-only one revokes them as
-- this file does for events.
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO careboard_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO careboard_app;

-- Events: read and append, nothing else.
REVOKE UPDATE, DELETE, TRUNCATE ON events FROM PUBLIC, careboard_app;
-- The migrations' bookkeeping is the owner's.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON _sqlx_migrations FROM careboard_app;

-- Not even the owner rewrites history by accident: changing an event means first
-- disabling this trigger, a deliberate act that the owner alone can do.
CREATE FUNCTION events_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

CREATE TRIGGER events_not_truncated
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_append_only();
