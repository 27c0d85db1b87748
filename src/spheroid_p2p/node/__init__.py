"""The composition root: the only package that joins networking (wire, core, net) and ml."""

from __future__ import annotations

__all__: list[str] = []
