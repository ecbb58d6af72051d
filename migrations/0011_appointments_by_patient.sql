-- `myAppointments`: a patient's appointments, newest request first, found by index
-- rather than by reading every appointment document of the live generation.
create index appointment_view_by_patient on appointment_view
    (generation, (doc -> 'state' ->> 'patientId'), (doc -> 'state' ->> 'requestedAt') desc)
    where doc -> 'state' ->> 'patientId' is not null;
