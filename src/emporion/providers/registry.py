"""Adapters by name, found through the ``emporion.adapters`` entry points (built-ins included)."""

from __future__ import annotations

from importlib.metadata import entry_points

from emporion.providers.base import Adapter


def adapter_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="emporion.adapters"))


def load_adapter(name: str) -> Adapter:
    for ep in entry_points(group="emporion.adapters", name=name):
        return ep.load()()
    raise KeyError(f"no adapter named {name!r}; installed: {', '.join(adapter_names()) or 'none'}")
