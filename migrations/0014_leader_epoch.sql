-- The leader epoch: one row, bumped by every process that takes the leader lock before
-- it reads a checkpoint. Every checkpoint compare-and-set requires the epoch its
-- writer bumped, read `for share` in the same statement (see src/leader.rs): an index
-- lookup, where the earlier fence copied the whole lock table (`pg_locks`) per batch.

create table leader_epoch (
    -- Exactly one row.
    one    boolean primary key default true check (one),
    epoch  bigint not null default 0
);

insert into leader_epoch default values;
