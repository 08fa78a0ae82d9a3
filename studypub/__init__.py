"""StudyPublicator's domain package: settings, database, DICOM networking, de-identification, storage."""

from pydicom import config as _pydicom_config

# pydicom's reading validation warns with the offending *value* (a malformed date, a name...), which would put
# DICOM contents into logs. Values are validated where it matters (the anonymiser's verification).
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
