"""The patient's link (placeholder: filled in by the link-page work)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
