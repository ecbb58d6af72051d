-- Boards the matcher could not match after its retries (a Board whose events it cannot
-- read, for instance). A parked Board no longer holds up every other Board: the matcher
-- moves its checkpoint on, retries parked Boards now and then and whenever something
-- new happens on them, and removes a Board from here once matching it works again.
-- `/metrics` reports how many are parked.

create table matcher_parked_boards (
    board_id    uuid primary key,
    -- The event that made the matcher look at the Board when it gave up.
    event_seq   bigint not null,
    error       text not null,
    attempts    int not null,
    parked_at   timestamptz not null default clock_timestamp(),
    retried_at  timestamptz
);
