"""Thin asyncio glue: moves bytes, arms timers, runs actions; decides nothing."""

from __future__ import annotations

__all__: list[str] = []
