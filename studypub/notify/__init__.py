"""Reaching the patient and other systems: the outbox of messages (the link by email and SMS, the PIN, the
FHIR push), how each is composed in the patient's language, and the providers that carry them."""
