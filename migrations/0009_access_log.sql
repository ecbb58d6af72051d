-- The access log (DESIGN §9): one row per disclosure of patient data, who saw what,
-- when, from where. Rows are never changed or removed (the triggers below refuse it),
-- and each row carries the SHA-256 of the previous row and its own, computed over its
-- content, so `careboard audit verify` finds a row edited or deleted by anyone able to
-- switch the triggers off.
--
-- Order: `seq` is 1, 2, 3, ... with no gaps. Writers (a single task per process
-- committing records in groups) lock `access_log_head` for each group, so writers in
-- several processes take turns and the chain never forks.

create table access_log (
    seq             bigint primary key check (seq > 0),
    recorded_at     timestamptz not null,
    -- The verified principal. A patient's name is not kept (their subject and patient id
    -- are): the log outlives erasure and must hold no patient plaintext (DESIGN §10).
    subject         text not null,
    role            text not null,
    name            text,
    scope           jsonb not null,
    operation       text not null,
    operation_name  text,
    correlation_id  text not null,
    client_addr     text,
    -- What was disclosed, in ids (e.g. a Board at a version, which time travel expands
    -- to the exact patients shown); never patient names or reasons.
    disclosed       jsonb not null,
    prev_hash       bytea not null check (octet_length(prev_hash) = 32),
    hash            bytea not null check (octet_length(hash) = 32)
);

create index access_log_by_subject on access_log (subject, seq);
-- "Who has seen my record": records are found by the ids they disclose.
create index access_log_by_disclosed on access_log using gin (disclosed jsonb_path_ops);

-- The end of the chain. Verify compares it with the last row, so cutting rows off the
-- end is found as well as a gap in the middle.
create table access_log_head (
    only_row  boolean primary key default true check (only_row),
    seq       bigint not null,
    hash      bytea not null check (octet_length(hash) = 32)
);
insert into access_log_head (seq, hash) values (0, decode(repeat('00', 32), 'hex'));

create function access_log_refuse_change() returns trigger language plpgsql as $$
begin
    raise exception 'the access log is append-only: % on % is refused', tg_op, tg_table_name
        using errcode = 'insufficient_privilege';
end
$$;

create trigger access_log_append_only
    before update or delete on access_log
    for each row execute function access_log_refuse_change();
create trigger access_log_no_truncate
    before truncate on access_log
    for each statement execute function access_log_refuse_change();

-- A new row must continue the chain: its seq follows the last one and its prev_hash is
-- that row's hash (genesis: 32 zero bytes).
create function access_log_link() returns trigger language plpgsql as $$
declare
    previous bytea;
begin
    if new.seq = 1 then
        previous := decode(repeat('00', 32), 'hex');
    else
        select hash into previous from access_log where seq = new.seq - 1;
    end if;
    if previous is null or previous <> new.prev_hash then
        raise exception 'access log row % does not continue the chain', new.seq
            using errcode = 'integrity_constraint_violation';
    end if;
    return new;
end
$$;

create trigger access_log_chained
    before insert on access_log
    for each row execute function access_log_link();

-- The head only moves forward, onto a row that exists with that hash.
create function access_log_head_advance() returns trigger language plpgsql as $$
begin
    if tg_op <> 'UPDATE' or new.seq <= old.seq or not exists (
        select 1 from access_log where seq = new.seq and hash = new.hash
    ) then
        raise exception 'the access log head only moves forward onto a written row'
            using errcode = 'insufficient_privilege';
    end if;
    return new;
end
$$;

create trigger access_log_head_forward_only
    before update or delete on access_log_head
    for each row execute function access_log_head_advance();
create trigger access_log_head_no_truncate
    before truncate on access_log_head
    for each statement execute function access_log_refuse_change();
