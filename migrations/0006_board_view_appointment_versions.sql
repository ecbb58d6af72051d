-- The Board version at which each appointment row was last written. Live Boards keep
-- the document they last published and re-read only the rows written since, so a
-- change to a Board of hundreds of appointments costs its changed rows, not the Board.
-- Rows written before this column existed carry 0: every process reads a Board whole
-- the first time it follows it.

alter table board_view_appointments add column board_version bigint not null default 0;
