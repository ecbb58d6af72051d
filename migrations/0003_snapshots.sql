-- Snapshots bound the cost of time travel: a fold as of T starts from the newest
-- snapshot that contains only events recorded at or before T.

create table snapshots (
    -- 'board' for board_view documents, 'appointment' / 'shift' for single streams.
    kind            text not null check (kind in ('board', 'appointment', 'shift')),
    id              uuid not null,
    -- The fold's version: a changed fold ignores snapshots of the old one.
    fold_version    int not null,
    -- Events folded in: a Board's event count, or a stream's version.
    version         bigint not null,
    -- Newest recorded_at among the events folded in. Within a stream recorded_at grows
    -- with the version, so a snapshot with max_recorded_at <= T holds only events
    -- recorded at or before T, and per stream a prefix of them.
    max_recorded_at timestamptz not null,
    -- For Board snapshots: the projector's read cursor when it was taken. The Board's
    -- events after it (in (tx, seq) order) are exactly those the snapshot may lack.
    tx              xid8,
    seq             bigint,
    doc             jsonb not null,
    created_at      timestamptz not null default clock_timestamp(),
    primary key (kind, id, fold_version, version)
);

create index snapshots_lookup_idx on snapshots (kind, id, fold_version, max_recorded_at desc);
