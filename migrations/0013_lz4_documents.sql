-- Board documents and snapshots are compressed with lz4 instead of pglz when they are
-- large enough to be TOASTed (about 2 kB and up: Board headers of large Boards, Board
-- snapshots, appointments with long notes). Every projector batch writes them, and a
-- rebuild writes them all again; pglz compression was the largest single cost of
-- those writes in the database. lz4 compresses several times faster and decompresses
-- faster for reads, at a slightly larger size. Rows already stored keep pglz until they
-- are written again; both are read the same way.
--
-- A server built without lz4 (or older than PostgreSQL 14) keeps pglz: nothing else
-- depends on the method.

do $$
begin
    execute 'alter table board_view alter column doc set compression lz4';
    execute 'alter table board_view_appointments alter column doc set compression lz4';
    execute 'alter table snapshots alter column doc set compression lz4';
exception when feature_not_supported or syntax_error then
    raise notice 'lz4 compression is not available here: documents stay compressed with pglz';
end
$$;
