-- What changes with every batch of a Board lives in columns of `board_view`, not only in
-- its header document: the version, the position and (new here) the newest recorded
-- time. A batch that applies only appointment events leaves the header's contents (the
-- Board, its shifts, the versions of those streams) as they were, so it updates these
-- three fixed-width columns and leaves `doc` alone instead of rewriting the whole
-- document per batch. Readers take each counter as the larger of the document's and the
-- column's (all three only grow): a document written whole carries them too, and a row
-- written by an older build has a stale column.
--
-- The table is made again so that the three counters sit side by side, right before
-- `doc`, and none of them is indexed: such an update is a heap-only tuple on the same
-- page, and PostgreSQL logs only the bytes between the unchanged prefix and the
-- unchanged suffix of the row (the document among them), a few dozen bytes where a
-- column added at the end would make the document part of the logged change.

create table board_view_counted (
    generation       int not null,
    id               uuid not null,
    -- Copied out of the document for the `boards` filters and ordering.
    date             date,
    specialty        text,
    region           text,
    status           text,
    version          bigint not null,
    position         bigint not null,
    max_recorded_at  timestamptz,
    doc              jsonb not null,
    primary key (generation, id)
);

insert into board_view_counted
select generation, id, date, specialty, region, status, version, position,
       case when jsonb_typeof(doc->'maxRecordedAt') = 'string'
            then (doc->>'maxRecordedAt')::timestamptz end,
       doc
  from board_view;

drop table board_view;
alter table board_view_counted rename to board_view;
alter index board_view_counted_pkey rename to board_view_pkey;
-- The listing index holds only Boards with a date (every filter of the `boards` list
-- and of its dates says so): unrestricted, it was the planner's pick for the
-- projector's locked read of a batch's headers (`generation = $1 and id = any($2)`),
-- which then tested the ids on every header of the generation instead of looking each
-- up by primary key.
create index board_view_listing_idx on board_view (generation, date, id) where date is not null;

grant select, insert, update, delete on board_view to careboard_app;

-- As migration 0013 set it for the table this one replaces.
do $$
begin
    execute 'alter table board_view alter column doc set compression lz4';
exception when feature_not_supported or syntax_error then
    raise notice 'lz4 compression is not available here: documents stay compressed with pglz';
end
$$;
