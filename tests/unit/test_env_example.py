"""`.env.example` documents every setting, and nothing that does not exist."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from studypub.settings import Settings

ROOT = Path(__file__).parents[2]


def _setting_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= {f"STUDYPUB_{name}__{sub}".upper() for sub in annotation.model_fields}
        else:
            names.add(f"STUDYPUB_{name}".upper())
    return names


def test_env_example_lists_every_setting() -> None:
    documented = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.startswith("STUDYPUB_")
    }
    assert documented == _setting_names()
