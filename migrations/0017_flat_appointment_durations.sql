-- `appointment_durations` may be folded from its flat columns alone
-- (`DaemonConfig::flat_durations`): such rows keep no document.
alter table appointment_durations alter column doc drop not null;
