"""FHIR for other systems: the published (anonymised) study as an ImagingStudy, in R5 (``fhir.resources``'s
default) and R4B (for R4 clients), built by a pure mapper and validated by the models; the push of it to a
configured FHIR server."""
