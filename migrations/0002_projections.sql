-- Read models built by the projector, and the projector's own bookkeeping.
--
-- Every document table carries a `generation`: a rebuild writes a new generation side
-- by side with the live one and the switch is one update of projection_state.

create table projection_state (
    name                text not null,
    generation          int not null,
    -- 'live' serves reads; 'building' catches up side by side; 'retired' was replaced.
    status              text not null check (status in ('live', 'building', 'retired')),
    -- The version of the projection code that built this generation.
    projection_version  int not null,
    -- Checkpoint: the (tx, seq) of the last event applied. Never seq alone.
    tx                  xid8 not null default '0'::xid8,
    seq                 bigint not null default 0,
    events_applied      bigint not null default 0,
    -- For a rebuild: the newest position when it started, to show progress.
    target_seq          bigint,
    started_at          timestamptz not null default clock_timestamp(),
    updated_at          timestamptz not null default clock_timestamp(),
    primary key (name, generation)
);

create unique index projection_state_one_live on projection_state (name) where status = 'live';
create unique index projection_state_one_building on projection_state (name) where status = 'building';

create table board_view (
    generation  int not null,
    id          uuid not null,
    -- Copied out of the document for the `boards` filters and ordering.
    date        date,
    specialty   text,
    region      text,
    status      text,
    version     bigint not null,
    position    bigint not null,
    doc         jsonb not null,
    primary key (generation, id)
);

create index board_view_listing_idx on board_view (generation, date, id);

create table appointment_view (
    generation  int not null,
    id          uuid not null,
    board_id    uuid,
    version     bigint not null,
    doc         jsonb not null,
    primary key (generation, id)
);

create table provider_shift_view (
    generation  int not null,
    id          uuid not null,
    board_id    uuid,
    version     bigint not null,
    doc         jsonb not null,
    primary key (generation, id)
);

-- Flat facts per appointment for wait-time estimates and reporting.
create table appointment_durations (
    generation      int not null,
    appointment_id  uuid not null,
    board_id        uuid,
    specialty       text,
    region          text,
    requested_at    timestamptz,
    scheduled_at    timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    cancelled_at    timestamptz,
    version         bigint not null,
    -- The folded appointment the next event applies to.
    doc             jsonb not null,
    primary key (generation, appointment_id)
);

create index appointment_durations_specialty_idx
    on appointment_durations (generation, specialty, finished_at);

-- Events a projection could not apply after retries: recorded, skipped, replayable.
create table dead_letters (
    id              bigint generated always as identity primary key,
    projection      text not null,
    generation      int not null,
    event_seq       bigint not null,
    event_id        uuid not null,
    stream_id       uuid not null,
    stream_version  bigint not null,
    -- The document the event belongs to (a Board for board_view).
    document_id     uuid not null,
    error           text not null,
    attempts        int not null,
    recorded_at     timestamptz not null default clock_timestamp(),
    replayed_at     timestamptz
);

create index dead_letters_open_idx on dead_letters (projection, generation) where replayed_at is null;
