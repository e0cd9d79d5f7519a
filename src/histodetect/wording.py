"""Wording of counts in messages: "1 problem", "2 problems", "1 patch", "3 patches"."""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`count` followed by `noun`, in the plural unless `count` is 1.

    Args:
        count: how many.
        noun: the singular ("problem", "patch").
        plural_form: the plural when adding "s" or "es" is wrong.
    """
    if count == 1:
        return f"1 {noun}"
    if plural_form is None:
        plural_form = noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")
    return f"{count} {plural_form}"
