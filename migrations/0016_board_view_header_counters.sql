-- What changes with every batch of a Board lives in columns of `board_view`, not only in
-- its header document: the version and position columns (already there) and the newest
-- recorded time (added here). A batch that applies only appointment events leaves the
-- header's contents (the Board, its shifts, the versions of those streams) as they were,
-- so it updates these fixed-width columns and leaves `doc` alone instead of rewriting
-- the whole document per batch. Readers take each of the three counters as the larger
-- of the document's and the column's (all three only grow): a document written whole
-- carries them too, and a row written by an older build has a stale column.
--
-- The header document is moved out of line (TOAST) from 128 bytes on rather than from
-- about 2 kB, so that such an update copies a row of a few dozen bytes and a pointer to
-- the unchanged document, not the document itself. None of the updated columns is
-- indexed: the update is a heap-only tuple.

alter table board_view add column max_recorded_at timestamptz;

update board_view
   set max_recorded_at = (doc->>'maxRecordedAt')::timestamptz
 where jsonb_typeof(doc->'maxRecordedAt') = 'string';

alter table board_view set (toast_tuple_target = 128);
