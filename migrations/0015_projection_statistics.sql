-- Statistics for young projection tables. A freshly deployed database has none: the
-- planner then takes a Board for a handful of rows, and `board_view`'s locked read of
-- the appointments a batch touched walks every row of each Board (by the Board-version
-- index, the appointment id a filter) instead of looking the rows up by primary key;
-- a prepared statement's generic plan, made while its table was nearly empty, scans
-- the table as it grows. Autovacuum analyzes a table only once a minute at best, and
-- then at 10 % growth, while a busy projector doubles its young tables in seconds.
--
-- The projector analyzes a projection table itself each time its size has doubled since
-- its last analyze (see src/projector/statistics.rs). The server's login does not own the
-- tables, and only an owner may analyze them: this function runs as the owner, for
-- these tables only.

create function analyze_projection_table(name text) returns void
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if name not in ('board_view', 'board_view_appointments', 'appointment_view',
                    'provider_shift_view', 'appointment_durations') then
        raise exception 'not a projection table: %', name using errcode = '42501';
    end if;
    execute format('analyze %I', name);
end
$$;

revoke all on function analyze_projection_table(text) from public;
grant execute on function analyze_projection_table(text) to careboard_app;
