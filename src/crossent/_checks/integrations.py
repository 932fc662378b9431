"""Checks of the Hugging Face transformers integration (crossent.integrations.transformers)."""

from __future__ import annotations
