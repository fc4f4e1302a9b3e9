"""Griffe extension for the API reference: the docstrings are written for Sphinx-style readers
(``:class:`~landmark.api.Landmarks```, ````code````); mkdocstrings renders Markdown, so the roles become
inline code (``Landmarks``) instead of showing ``:class:`` literally."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const):`~?([^`]+)`")


def plain(text: str) -> str:
    """``:class:`~a.b.C``` -> ```C```, ``:func:`a.b``` -> ```a.b```."""

    def code(match: re.Match[str]) -> str:
        target = match.group(1)
        if match.group(0).split("`", 1)[1].startswith("~"):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return ROLE.sub(code, text)


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
