-- The Board version at which each appointment row was last written. Live Boards keep
-- the document they last published and re-read only the rows written since, so a
-- change to a Board of hundreds of appointments costs its changed rows, not the Board.
-- Rows written before this column existed take their Board's current version. A row
-- that still carries 0 was written by an older build (a rolling upgrade): readers
-- always include such rows.

alter table board_view_appointments add column board_version bigint not null default 0;

update board_view_appointments x
   set board_version = v.version
  from board_view v
 where v.generation = x.generation and v.id = x.board_id;
