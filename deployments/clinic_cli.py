"""``studypub clinic add|list|update``: the instance's clinics, managed by its operator (the superadmin).

Each prints one JSON object. A clinic's PACS and settings are given as ``--set name=value`` (the names of
``studypub.overrides.CLINIC_OVERRIDABLE``, e.g. ``--set pacs.host=10.0.0.5 --set pacs.port=104``); an empty
value returns the setting to the environment's.
"""

from __future__ import annotations

import argparse
import json
from typing import IO, Any


def add_arguments(sub: Any) -> None:
    c = sub.add_parser("clinic", help="the instance's clinics: add, list, update (PACS, settings, contact)")
    verbs = c.add_subparsers(dest="verb", required=True)
    for verb in ("add", "update"):
        v = verbs.add_parser(verb)
        v.add_argument("code", help="the clinic code the MIS sends (case and surrounding spaces do not matter)")
        v.add_argument("--name", action="append", default=[], help="display name, LANG=NAME (repeat), e.g. en=Khimki")
        v.add_argument("--phone", help="contact phone shown on the patient's page")
        v.add_argument("--address", help="contact address shown on the patient's page")
        v.add_argument("--time-zone", help="IANA time zone of its pages and archives (default: the environment's)")
        v.add_argument("--languages", help="its languages, comma-separated, the first its pages' default")
        v.add_argument("--logo-url", help="logo shown on its patients' pages (https URL)")
        v.add_argument("--colour", help="brand colour of its patients' pages, #RRGGBB")
        v.add_argument(
            "--set", action="append", default=[], metavar="NAME=VALUE", help="a PACS field or setting (repeat)"
        )
        if verb == "update":
            v.add_argument("--disable", action="store_true", help="refuse its requests from now on")
            v.add_argument("--enable", action="store_true")
    verbs.add_parser("list")


def _value(name: str, raw: str) -> Any:
    if name == "pacs.store_from_aes":
        return [v.strip() for v in raw.split(",") if v.strip()]
    return raw


def _fields(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    from deployments.cli import UsageError

    fields: dict[str, Any] = {}
    names = {}
    for item in args.name:
        lang, _, name = item.partition("=")
        if not name:
            raise UsageError(f"--name takes LANG=NAME, e.g. en=Khimki: {item!r}")
        names[lang.strip()] = name
    if names:
        fields["names"] = names
    for field in ("phone", "address", "time_zone", "languages", "logo_url", "colour"):
        if getattr(args, field) is not None:
            fields[field] = getattr(args, field)
    if getattr(args, "disable", False):
        fields["disabled"] = True
    if getattr(args, "enable", False):
        fields["disabled"] = False
    values: dict[str, Any] = {}
    for item in args.set:
        name, eq, raw = item.partition("=")
        if not eq:
            raise UsageError(f"--set takes NAME=VALUE: {item!r}")
        values[name.strip()] = _value(name.strip(), raw.strip())
    return fields, values


def describe(session: Any, settings: Any, clinic: Any) -> dict[str, Any]:
    from studypub.overrides import CLINIC_OVERRIDABLE, load_overrides

    return {
        "code": clinic.code,
        "names": clinic.names,
        "phone": clinic.phone,
        "address": clinic.address,
        "time_zone": clinic.time_zone,
        "languages": clinic.languages,
        "logo_url": clinic.logo_url,
        "colour": clinic.colour,
        "disabled": clinic.disabled,
        "settings": load_overrides(session, clinic.code, CLINIC_OVERRIDABLE),
    }


def cmd_clinic(args: argparse.Namespace, out: IO[str]) -> int:
    from deployments.cli import EXIT_FAILED, EXIT_OK, _admin_actor, _emit, _settings
    from studypub.clinics import add_clinic, list_clinics, update_clinic
    from studypub.db import get_sessionmaker, migrate
    from studypub.errors import StudyPubError
    from studypub.overrides import CLINIC_OVERRIDABLE

    settings = _settings()
    migrate(settings)
    with get_sessionmaker(settings)() as session:
        if args.verb == "list":
            _emit(out, {"status": "ok", "clinics": [describe(session, settings, c) for c in list_clinics(session)]})
            return EXIT_OK
        fields, values = _fields(args)
        unknown = sorted(set(values) - set(CLINIC_OVERRIDABLE))
        if unknown:
            _emit(out, {"status": "FAILED", "reason": f"not a clinic setting: {', '.join(unknown)}"})
            return EXIT_FAILED
        change = add_clinic if args.verb == "add" else update_clinic
        try:
            clinic = change(session, settings, args.code, actor=_admin_actor(), fields=fields, values=values)
        except StudyPubError as exc:
            _emit(out, {"status": "FAILED", "reason": exc.reason})
            return EXIT_FAILED
        _emit(out, {"status": "ok", "clinic": json.loads(json.dumps(describe(session, settings, clinic)))})
    return EXIT_OK
