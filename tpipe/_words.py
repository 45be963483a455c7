"""Counts written for people: "1 event", "2 events", "1 batch", "3 batches"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str = "", *, spec: str = "") -> str:
    """`count` and `noun`, the noun in the plural unless `count` is 1: `plural` when given
    ("indices"), else `noun` + "s"; `spec` formats the number ("," writes 1,024)."""
    return f"{count:{spec}} {noun if count == 1 else plural or noun + 's'}"
