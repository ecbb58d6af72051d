-- The append-only event store: one row per stream, one row per event.

create table streams (
    id          uuid primary key,
    type        text not null check (type in ('board', 'provider', 'shift', 'appointment')),
    -- The Board a shift or appointment belongs to (and a Board's own id for its stream):
    -- what multi-stream Board views and the audit log by Board are keyed on.
    board_id    uuid null,
    -- Number of events in the stream; the optimistic-concurrency check compares it.
    version     bigint not null check (version >= 0),
    created_at  timestamptz not null default clock_timestamp(),
    updated_at  timestamptz not null default clock_timestamp(),
    archived    boolean not null default false
);

create index streams_board_id_idx on streams (board_id) where board_id is not null;
create index streams_type_idx on streams (type);

create table events (
    -- Global position. Ordering comes from the identity column, never from a hot row.
    seq          bigint generated always as identity primary key,
    id           uuid not null unique,
    stream_id    uuid not null references streams (id),
    version      bigint not null check (version >= 1),
    type         text not null,
    data         jsonb not null,
    metadata     jsonb not null default '{}'::jsonb,
    recorded_at  timestamptz not null default clock_timestamp(),
    -- Writing transaction: readers that must not skip events order by (tx, seq) and
    -- stop below the oldest transaction still running.
    tx           xid8 not null default pg_current_xact_id(),
    -- The safety net of optimistic concurrency: two writers can never both own a version.
    constraint events_stream_version_key unique (stream_id, version)
);

create index events_tx_seq_idx on events (tx, seq);
create index events_type_idx on events (type);

-- Idempotency: a command sent again with the same commandId returns the first outcome
-- and appends nothing. Written in the same transaction as the events it produced.
create table processed_commands (
    command_id    text primary key,
    operation     text not null,
    -- The command's input, so a reused id with a different input is refused instead
    -- of silently answered with an unrelated result.
    input         jsonb not null,
    -- Streams written and their versions, plus the position of the last event.
    outcome       jsonb not null,
    recorded_at   timestamptz not null default clock_timestamp()
);
