"""The audit trail as people read it: each event a sentence in the interface's language ("Link page opened on
a phone"), who did it in words, and its details as labelled values (folded on the page).

An action without a sentence here is shown by its code; a test checks that every action the code records
has one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from studypub.i18n import N_, pN_
from studypub.i18n.labels import CHOICES, DEVICES, ROLES, SETTINGS
from studypub.i18n.translator import Labels, Translator

ACTORS = Labels(
    "actor",
    {
        "system": pN_("actor", "the service"),
        "link": pN_("actor", "the patient's link"),
        "mis": pN_("actor", "the MIS"),
        "cli": pN_("actor", "the command line"),
        "manual": pN_("actor", "the dashboard"),
    },
)

# Each action's name (the filter) and sentence.
ACTIONS = Labels(
    "audit",
    {
        "publication.requested": pN_("audit", "Publication requested"),
        "publication.completed": pN_("audit", "Study published"),
        "publication.failed": pN_("audit", "Publication failed"),
        "publication.waiting": pN_("audit", "Waiting for the study to reach the PACS"),
        "publication.interrupted": pN_("audit", "Run interrupted, resumed"),
        "publication.requeued": pN_("audit", "Publication queued again"),
        "publication.retried": pN_("audit", "Retry of the Prefect run requested"),
        "publication.republished": pN_("audit", "Publication started again under the same link"),
        "publication.extended": pN_("audit", "Storage period extended"),
        "publication.revoked": pN_("audit", "Link revoked, archive deleted"),
        "publication.expired": pN_("audit", "Storage period over"),
        "publication.deleted": pN_("audit", "Archive deleted at the end of its storage period"),
        "publication.identifiers_erased": pN_("audit", "Patient identifiers erased"),
        "link.viewed": pN_("audit", "Link page opened"),
        "link.downloaded": pN_("audit", "Study downloaded"),
        "link.viewed_in_browser": pN_("audit", "Study viewed in the browser"),
        "link.locked": pN_("audit", "Link locked after wrong answers"),
        "link.unlocked": pN_("audit", "Link unlocked"),
        "link.new_pin": pN_("audit", "New PIN made for the link"),
        "message.resent": pN_("audit", "Message to the patient sent again"),
        "user.signed_in": pN_("audit", "Signed in"),
        "user.signed_out": pN_("audit", "Signed out"),
        "user.created": pN_("audit", "User added"),
        "user.password_reset": pN_("audit", "Password reset"),
        "user.role_changed": pN_("audit", "Role changed"),
        "user.disabled": pN_("audit", "User disabled"),
        "user.enabled": pN_("audit", "User enabled"),
        "api_key.created": pN_("audit", "MIS key created"),
        "api_key.revoked": pN_("audit", "MIS key revoked"),
        "settings.changed": pN_("audit", "Settings changed"),
        "clinic.added": pN_("audit", "Clinic added"),
        "clinic.updated": pN_("audit", "Clinic changed"),
        "settings.pacs_echo": pN_("audit", "PACS connection tested"),
    },
)

# Sentences that say more than the action's name, from the event's details.
_LINK_VIEWED = {
    "mobile": N_("Link page opened on a phone"),
    "desktop": N_("Link page opened on a computer"),
    "bot": N_("Link previewed by a messenger or a program"),
}
_DOWNLOADED = {
    "mobile": N_("Study downloaded on a phone"),
    "desktop": N_("Study downloaded on a computer"),
    "bot": N_("Study downloaded by a program"),
}

DETAILS = Labels(
    "audit_detail",
    {
        "key": pN_("audit_detail", "Link key begins with"),
        "net": pN_("audit_detail", "Network"),
        "ua": pN_("audit_detail", "Device"),
        "state": pN_("audit_detail", "The link was"),
        "via": pN_("audit_detail", "Delivered"),
        "role": pN_("audit_detail", "Role"),
        "user": pN_("audit_detail", "User"),
        "name": pN_("audit_detail", "Name"),
        "error_code": pN_("audit_detail", "Error code"),
        "resumes": pN_("audit_detail", "Interruptions in a row"),
        "instances": pN_("audit_detail", "Images"),
        "from": pN_("audit_detail", "Kept until, before"),
        "to": pN_("audit_detail", "Kept until, now"),
        "flow_run_id": pN_("audit_detail", "Prefect run"),
        "waiting_for": pN_("audit_detail", "Waiting for"),
        "ok": pN_("audit_detail", "The PACS answered"),
        "changed": pN_("audit_detail", "Changed"),
        "clinic": pN_("audit_detail", "Clinic"),
    },
)
LINK_STATES = Labels(
    "link_state",
    {
        "ready": pN_("link_state", "ready"),
        "preparing": pN_("link_state", "being prepared"),
        "failed": pN_("link_state", "failed"),
        "gone": pN_("link_state", "expired or revoked"),
    },
)
DELIVERY = Labels(
    "delivery",
    {
        "file": pN_("delivery", "by this service"),
        "redirect": pN_("delivery", "from the storage (redirect)"),
    },
)
WAITING_FOR = Labels("waiting_for", {"study": pN_("waiting_for", "the study to reach the PACS")})


def sentence(t: Translator, action: str, details: dict[str, Any] | None) -> str:
    details = details or {}
    ua = str(details.get("ua", ""))
    if action == "link.viewed" and ua in _LINK_VIEWED:
        return t.gettext(_LINK_VIEWED[ua])
    if action == "link.downloaded" and ua in _DOWNLOADED:
        return t.gettext(_DOWNLOADED[ua])
    if action == "publication.completed" and isinstance(details.get("instances"), int):
        count = details["instances"]
        return t.ngettext("Study published: %(num)s image", "Study published: %(num)s images", count)
    if action == "user.created" and "user" in details:
        return t.gettext(
            "User %(user)s added as %(role)s", user=details["user"], role=t.label(ROLES, details.get("role"))
        )
    if action == "user.role_changed" and "user" in details:
        return t.gettext("%(user)s is now %(role)s", user=details["user"], role=t.label(ROLES, details.get("role")))
    return t.label(ACTIONS, action)


def actor(t: Translator, name: str) -> tuple[str, bool]:
    """Who, in words; (text, True) when it is a user's name (data, shown as it is)."""
    return t.label(ACTORS, name), name not in ACTORS


def _yes_no(t: Translator, value: Any) -> str:
    return t.gettext("yes") if value else t.gettext("no")


def _date(t: Translator, tz: tzinfo) -> Callable[[Any], str]:
    def show(value: Any) -> str:
        try:
            return t.short_datetime(datetime.fromisoformat(str(value)), tz)
        except ValueError:
            return str(value)

    return show


def _changed(t: Translator, value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    shown = []
    for name, new in value.items():
        if new is None:
            new_text = t.gettext("default")
        elif name in CHOICES:
            new_text = t.label(CHOICES[name], str(new))
        else:
            new_text = str(new)
        shown.append(f"{t.label(SETTINGS, name)}: {new_text}")
    return "; ".join(shown)


def detail_rows(t: Translator, details: dict[str, Any] | None, tz: tzinfo) -> list[tuple[str, str, bool]]:
    """The details as (label, value, the value is data shown as it is) triples, codes in words."""
    values: dict[str, Callable[[Any], str]] = {
        "ua": lambda v: t.label(DEVICES, v),
        "role": lambda v: t.label(ROLES, v),
        "state": lambda v: t.label(LINK_STATES, v),
        "via": lambda v: t.label(DELIVERY, v),
        "waiting_for": lambda v: t.label(WAITING_FOR, v),
        "ok": lambda v: _yes_no(t, v),
        "from": _date(t, tz),
        "to": _date(t, tz),
        "changed": lambda v: _changed(t, v),
    }
    rows = []
    for key, value in (details or {}).items():
        show = values.get(key)
        rows.append((t.label(DETAILS, key), show(value) if show else str(value), show is None))
    return rows
