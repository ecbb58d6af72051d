-- Least privilege. The schema belongs to the role that runs migrations (the owner);
-- the server connects as a login that is a member of careboard_app, which may read
-- everything, append events, and keep the read models, but may never change or remove
-- an event: the event log is the audit log, and the database itself refuses a rewrite.

-- A group role without login: each deployment grants it to the login its servers use
-- (the embedded default and the test harness create `careboard_server`). Roles belong
-- to the cluster, so several databases may race to create it.
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'careboard_app') then
        create role careboard_app nologin;
    end if;
exception when duplicate_object or unique_violation then
    null;
end
$$;

grant usage on schema public to careboard_app;
grant select, insert, update, delete on all tables in schema public to careboard_app;
grant usage, select on all sequences in schema public to careboard_app;
-- Tables of later migrations get the same grants; an append-only one revokes them as
-- this file does for events.
alter default privileges in schema public
    grant select, insert, update, delete on tables to careboard_app;
alter default privileges in schema public
    grant usage, select on sequences to careboard_app;

-- Events: read and append, nothing else.
revoke update, delete, truncate on events from public, careboard_app;
-- The migrations' bookkeeping is the owner's.
revoke insert, update, delete, truncate on _sqlx_migrations from careboard_app;

-- Not even the owner rewrites history by accident: changing an event means first
-- disabling this trigger, a deliberate act that only the owner can do.
create function events_are_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'events are append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;

create trigger events_append_only
    before update or delete on events
    for each row execute function events_are_append_only();

create trigger events_not_truncated
    before truncate on events
    for each statement execute function events_are_append_only();
