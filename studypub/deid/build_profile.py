"""Generate ``ps3.15-2026c-e1-1.csv`` (DICOM PS3.15 Table E.1-1, edition 2026c) from dicom-anonymizer.

Build-time tool only: run ``python -m studypub.deid.build_profile`` with the ``test`` extra installed
(``dicom-anonymizer==2.1.0``). The engine reads only the checked-in CSV at run time.

dicom-anonymizer keeps the table as Python lists, one per action (``D_TAGS``, ``X_Z_D_TAGS``, ...), each
entry ``(group, element)`` or, for repeating groups, ``(group, element, group_mask, element_mask)``: an
attribute matches when ``tag.group & group_mask == group & group_mask`` and likewise for the element. The
attribute name is the trailing comment of each entry. Masks are written to the CSV as ``x`` nibbles
(``(0x6000, 0x3000, 0xFF00, 0xFFFF)`` -> group ``60xx``, element ``3000``; element mask 0 -> ``xxxx``).
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib.util
import io
import sys
import tokenize
from pathlib import Path

from pydicom.datadict import keyword_for_tag

SOURCE_MODULE = "dicomanonymizer.dicom_anonymization_databases.dicomfields_2026c"
EDITION = "2026c"
CSV_NAME = f"ps3.15-{EDITION}-e1-1.csv"
CSV_PATH = Path(__file__).with_name(CSV_NAME)
COLUMNS = ("group", "element", "keyword", "name", "action")

# dicom-anonymizer list name -> the action code exactly as printed in Table E.1-1.
LIST_ACTIONS: dict[str, str] = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "K_TAGS": "K",
    "C_TAGS": "C",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _masked_hex(value: int, mask: int) -> str:
    out = []
    for shift in (12, 8, 4, 0):
        nibble_mask = (mask >> shift) & 0xF
        if nibble_mask == 0:
            out.append("x")
        elif nibble_mask == 0xF:
            out.append(f"{(value >> shift) & 0xF:X}")
        else:  # a partial nibble mask cannot be written as a wildcard; refuse rather than guess
            raise ValueError(f"unsupported partial mask {mask:#06x}")
    return "".join(out)


def _comments_by_line(source: str) -> dict[int, str]:
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    return comments


def read_source() -> tuple[str, list[dict[str, str]]]:
    """Return (source file path, rows) parsed from dicom-anonymizer's 2026c table."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{SOURCE_MODULE} not importable: pip install dicom-anonymizer==2.1.0")
    path = Path(spec.origin)
    source = path.read_text(encoding="utf-8")
    comments = _comments_by_line(source)
    rows: list[dict[str, str]] = []
    seen: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name) or target.id == "ALL_TAGS":
            continue
        if target.id not in LIST_ACTIONS:
            if target.id.endswith("_TAGS"):
                raise SystemExit(f"unknown action list {target.id} in {path}")
            continue
        action = LIST_ACTIONS[target.id]
        if not isinstance(node.value, ast.List):
            raise SystemExit(f"{target.id} is not a literal list")
        for elt in node.value.elts:
            values = ast.literal_eval(elt)
            if len(values) == 2:
                group, element = values
                gmask, emask = 0xFFFF, 0xFFFF
            elif len(values) == 4:
                group, element, gmask, emask = values
            else:
                raise SystemExit(f"unexpected entry {values!r}")
            g, e = _masked_hex(group, gmask), _masked_hex(element, emask)
            if (g, e) in seen:
                raise SystemExit(f"({g},{e}) listed twice: {seen[(g, e)]} and {action}")
            seen[(g, e)] = action
            keyword = keyword_for_tag((group << 16) | element) if "x" not in e else ""
            name = comments.get(elt.end_lineno or elt.lineno, "") or comments.get(elt.lineno, "")
            rows.append({"group": g, "element": e, "keyword": keyword, "name": name, "action": action})
    rows.sort(key=lambda r: (r["group"].replace("x", "0"), r["element"].replace("x", "0")))
    _cross_check(rows)
    return str(path), rows


def _cross_check(rows: list[dict[str, str]]) -> None:
    """The parse must agree with the imported module (same entries, same count)."""
    import importlib

    module = importlib.import_module(SOURCE_MODULE)
    expected = len(module.ALL_TAGS)
    if expected != len(rows):
        raise SystemExit(f"parsed {len(rows)} rows but the module lists {expected}")


def render(rows: list[dict[str, str]], source_path: str) -> str:
    out = io.StringIO()
    out.write(
        f"# DICOM PS3.15 Annex E Table E.1-1 (edition {EDITION}), Basic Profile column. Generated by "
        "studypub.deid.build_profile from dicom-anonymizer 2.1.0 dicomfields_2026c.py; do not edit by hand.\n"
    )
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=CSV_PATH)
    parser.add_argument("--check", action="store_true", help="fail if the checked-in CSV is out of date")
    args = parser.parse_args(argv)
    source_path, rows = read_source()
    text = render(rows, source_path)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run python -m studypub.deid.build_profile", file=sys.stderr)
            return 1
        print(f"{args.output}: up to date ({len(rows)} rows)")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
