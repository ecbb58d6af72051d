-- A follower of a live Board (a reader's cached document, the live fan-out) re-reads
-- only the appointment rows written after the Board version it holds. Without this
-- index that read visits every row of the Board to test its version, so its cost
-- grew with the Board; with it, it follows the rows that changed.

create index board_view_appointments_by_version
    on board_view_appointments (generation, board_id, board_version);
