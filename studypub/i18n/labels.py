"""Codes in words: the names every surface shows for the domain's codes (steps, statuses, modalities, roles,
settings choices, why an image was withheld...). A code missing here is shown as it is; a test checks that
each code the domain defines has a name.
"""

from __future__ import annotations

from studypub.i18n import pN_
from studypub.i18n.translator import Labels, Translator

STEPS = Labels(
    "step",
    {
        "start": pN_("step", "Start"),
        "find": pN_("step", "Search"),
        "retrieve": pN_("step", "Retrieval"),
        "anonymise": pN_("step", "Anonymisation"),
        "zip": pN_("step", "Archiving"),
        "upload": pN_("step", "Upload"),
        "link": pN_("step", "Link"),
    },
)

STATUSES = Labels(
    "status",
    {
        "QUEUED": pN_("status", "Queued"),
        "RUNNING": pN_("status", "Running"),
        "COMPLETED": pN_("status", "Published"),
        "FAILED": pN_("status", "Failed"),
        "EXPIRED": pN_("status", "Expired"),
        "DELETED": pN_("status", "Deleted"),
    },
)

ROLES = Labels(
    "role",
    {
        "administrator": pN_("role", "administrator"),
        "registrator": pN_("role", "registrator"),
        "superadmin": pN_("role", "superadmin"),
    },
)

SOURCES = Labels(
    "source",
    {
        "mis": pN_("source", "from the MIS"),
        "manual": pN_("source", "by hand"),
        "cli": pN_("source", "from the command line"),
    },
)

# What the patient reads as the kind of study (DICOM Modality), in the words clinics use.
MODALITIES = Labels(
    "modality",
    {
        "CT": pN_("modality", "CT"),
        "MR": pN_("modality", "MRI"),
        "US": pN_("modality", "Ultrasound"),
        "CR": pN_("modality", "X-ray"),
        "DX": pN_("modality", "X-ray"),
        "RG": pN_("modality", "X-ray"),
        "IO": pN_("modality", "Dental X-ray"),
        "PX": pN_("modality", "Panoramic dental X-ray"),
        "MG": pN_("modality", "Mammography"),
        "XA": pN_("modality", "Angiography"),
        "RF": pN_("modality", "Fluoroscopy"),
        "PT": pN_("modality", "PET"),
        "NM": pN_("modality", "Nuclear medicine"),
        "ES": pN_("modality", "Endoscopy"),
        "XC": pN_("modality", "Photography"),
        "OP": pN_("modality", "Eye photography"),
        "OPT": pN_("modality", "Eye tomography (OCT)"),
        "ECG": pN_("modality", "ECG"),
        "BMD": pN_("modality", "Bone densitometry"),
        "SR": pN_("modality", "Report"),
        "DOC": pN_("modality", "Document"),
        "SC": pN_("modality", "Image"),
        "OT": pN_("modality", "Other"),
    },
)
# Objects that come with images but are not a kind of study: not named to the patient.
MODALITIES_NOT_SHOWN = frozenset({"KO", "PR", "SEG", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "FID"})

# Fields of forms and filters, as errors about them name them.
FIELDS = Labels(
    "field",
    {
        "patient_id": pN_("field", "PID"),
        "accession_number": pN_("field", "Accession Number"),
        "save_till": pN_("field", "Keep until"),
        "upload_from": pN_("field", "Publication date, from"),
        "upload_to": pN_("field", "Publication date, to"),
        "study_from": pN_("field", "Study date, from"),
        "study_to": pN_("field", "Study date, to"),
        "save_till_from": pN_("field", "Kept until, from"),
        "save_till_to": pN_("field", "Kept until, to"),
    },
)

# The settings an administrator may change in the dashboard (studypub.overrides.OVERRIDABLE).
SETTINGS = Labels(
    "setting",
    {
        "links.default_retention_days": pN_("setting", "Default storage period (days)"),
        "links.max_retention_days": pN_("setting", "Maximum storage period (days)"),
        "deid.burned_in_policy": pN_("setting", "Images that may show identity in the pixels"),
        "deid.dates": pN_("setting", "Dates in the images"),
        "deid.burned_in_text": pN_("setting", "Text found in the images by text recognition"),
        "pacs.host": pN_("setting", "PACS host"),
        "pacs.port": pN_("setting", "PACS DICOM port"),
        "pacs.called_ae": pN_("setting", "PACS AE title"),
        "pacs.calling_ae": pN_("setting", "Our AE title at this PACS (C-MOVE destination)"),
        "pacs.retrieve_method": pN_("setting", "Retrieval (move or get)"),
        "pacs.store_from_aes": pN_("setting", "AE titles that may store to us (comma-separated)"),
        "notify.clinic_name": pN_("setting", "Clinic name in messages to patients"),
        "notify.email_from": pN_("setting", "Sender address of emails"),
        "notify.email_from_name": pN_("setting", "Sender name of emails"),
        "notify.sms_sender": pN_("setting", "SMS sender name"),
        "notify.include_service_title": pN_("setting", "Name the service in emails"),
        "notify.sms_include_service_title": pN_("setting", "Name the service in SMS"),
        "notify.renotify_on_extend": pN_("setting", "Tell the patient when the storage is extended"),
        "factor.second_factor": pN_("setting", "Second factor on links"),
    },
)

SECOND_FACTORS = Labels(
    "second_factor",
    {
        "none": pN_("second_factor", "none"),
        "pin": pN_("second_factor", "PIN"),
        "birth_date": pN_("second_factor", "date of birth"),
    },
)

CHANNELS = Labels(
    "channel",
    {"email": pN_("channel", "Email"), "sms": pN_("channel", "SMS"), "fhir": pN_("channel", "FHIR server")},
)

MESSAGE_STATUSES = Labels(
    "message_status",
    {
        "queued": pN_("message_status", "queued"),
        "sending": pN_("message_status", "sending"),
        "sent": pN_("message_status", "sent"),
        "delivered": pN_("message_status", "delivered"),
        "failed": pN_("message_status", "failed"),
        "unknown": pN_("message_status", "unknown (not resent by itself)"),
    },
)

YES_NO = Labels("yes_no", {"true": pN_("yes_no", "yes"), "false": pN_("yes_no", "no")})

BURNED_IN_POLICIES = Labels(
    "burned_in_policy",
    {
        "withhold": pN_("burned_in_policy", "leave them out of the archive"),
        "include": pN_("burned_in_policy", "include them"),
        "fail": pN_("burned_in_policy", "stop the publication with an error"),
    },
)

DATES_POLICIES = Labels(
    "dates_policy",
    {
        "remove": pN_("dates_policy", "remove them"),
        "shift": pN_("dates_policy", "move them all by the same number of days (intervals kept)"),
        "keep": pN_("dates_policy", "keep them"),
    },
)

BURNED_IN_TEXT_POLICIES = Labels(
    "burned_in_text",
    {
        "mask": pN_("burned_in_text", "black it out"),
        "withhold": pN_("burned_in_text", "leave such images out of the archive"),
        "off": pN_("burned_in_text", "do not look for text"),
    },
)

RETRIEVE_METHODS = Labels(
    "retrieve_method",
    {
        "move": pN_("retrieve_method", "C-MOVE: the PACS sends the images to our DICOM port"),
        "get": pN_("retrieve_method", "C-GET: we fetch the images (no inbound port)"),
    },
)

# Settings chosen from a list: the setting -> the names of its choices (a test checks them against the settings'
# own Literal types). The Settings and Clinics screens show them through one macro (_macros.setting_field).
CHOICES = {
    "pacs.retrieve_method": RETRIEVE_METHODS,
    "deid.burned_in_policy": BURNED_IN_POLICIES,
    "deid.burned_in_text": BURNED_IN_TEXT_POLICIES,
    "deid.dates": DATES_POLICIES,
    "factor.second_factor": SECOND_FACTORS,
}

# Why an instance was left out of the archive (studypub.deid reason codes).
WITHHELD = Labels(
    "withheld",
    {
        "burned_in_annotation": pN_("withheld", "text burned into the image"),
        "recognizable_visual_features": pN_("withheld", "recognisable features such as a face"),
        "encapsulated_document": pN_("withheld", "an attached document that may name the patient"),
        "pixel_data_short": pN_("withheld", "damaged image data"),
        "pixel_data_missing_frames": pN_("withheld", "damaged image data"),
        "pixel_data_malformed": pN_("withheld", "damaged image data"),
        "pixel_data_undescribed": pN_("withheld", "damaged image data"),
        "identity_in_required_value": pN_("withheld", "personal data inside a technical value the image needs"),
        "burned_in_text": pN_("withheld", "text found in the image"),
        "pixel_data_undecodable": pN_("withheld", "image data that could not be checked for text"),
        "ocr_failed": pN_("withheld", "image data that could not be checked for text"),
        "withheld": pN_("withheld", "the image may show personal data"),
    },
)

# The kind of device a link was opened from (studypub.links.user_agent_class).
DEVICES = Labels(
    "device",
    {
        "mobile": pN_("device", "a phone"),
        "desktop": pN_("device", "a computer"),
        "bot": pN_("device", "a link preview or a program"),
        "other": pN_("device", "an unknown device"),
    },
)


def modality_names(t: Translator, codes: str | None) -> str:
    """The modalities of a study in words, each once, in their order ("MRI, X-ray")."""
    names: list[str] = []
    for code in (codes or "").split(","):
        code = code.strip().upper()
        if not code or code in MODALITIES_NOT_SHOWN:
            continue
        name = t.label(MODALITIES, code)
        if name not in names:
            names.append(name)
    return ", ".join(names)
