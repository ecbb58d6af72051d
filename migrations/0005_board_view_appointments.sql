-- A Board's appointments are stored one row each, beside the Board's header document in
-- board_view. A batch then writes the header and only the appointments its events
-- touched, so the projector's cost follows the events, not the size of the Board.
-- Readers merge the rows back into one document (`appointments` and `applied`).
--
-- `doc` is null for an appointment stream whose every event was dead-lettered: the row
-- still records the version passed.

create table board_view_appointments (
    generation  int not null,
    board_id    uuid not null,
    id          uuid not null,
    applied     bigint not null,
    doc         jsonb,
    primary key (generation, board_id, id)
);
