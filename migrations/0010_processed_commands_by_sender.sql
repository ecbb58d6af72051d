-- A commandId is its sender's idempotency key. Keyed by the id alone, the first caller
-- to use an id owned it: someone who learned a client's id (it is in the events'
-- metadata) could claim it first, and the owner's command was then refused. Keyed by
-- (sender, command_id), the same id from two senders is two commands, each answered
-- with its own result, and neither sender can reach the other's.
alter table processed_commands add column sender text;

-- Ids recorded earlier: a verified sender was written into the input's fingerprint
-- as '@sender'; commands of unverified or system callers carried none.
update processed_commands set sender = coalesce(input ->> '@sender', '');

alter table processed_commands alter column sender set not null;
alter table processed_commands drop constraint processed_commands_pkey;
alter table processed_commands add primary key (sender, command_id);
