-- Processes that react to events (the matcher) keep their own checkpoint, read the log
-- exactly like the projector does ((tx, seq) below xmin), and are run by the projector
-- leader. A process's effects are idempotent, so a crash between its writes and its
-- checkpoint only makes it look at the same events again.

create table process_checkpoints (
    name           text primary key,
    tx             xid8 not null default '0'::xid8,
    seq            bigint not null default 0,
    events_seen    bigint not null default 0,
    updated_at     timestamptz not null default clock_timestamp()
);

insert into process_checkpoints (name) values ('matcher');

