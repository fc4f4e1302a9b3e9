"""Griffe extension for the API reference.

- The docstrings are written for Sphinx-style readers (``:class:`~landmark.api.Landmarks```); mkdocstrings renders
  Markdown, so the roles become inline code (``Landmarks``) instead of showing ``:class:`` literally.
- Dataclass fields are documented by a trailing comment (``score: float  # in [0, 1] ...``) and the comment lines
  right below it; such a comment becomes the field's docstring, as the configuration reference reads it.
"""

from __future__ import annotations

import io
import re
import tokenize
from functools import cache
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def plain(text: str) -> str:
    """``:class:`~a.b.C``` -> ```C```, ``:func:`a.b``` -> ```a.b```."""
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


@cache
def comments(source: str) -> dict[int, str]:
    """``{line: comment text}`` of a module's source, and the lines that hold code."""
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def field_comment(lines: list[str], first: int, last: int) -> str:
    """The comment on source lines ``first..last`` (1-based) and the comment-only lines right below them."""
    found = comments("\n".join(lines) + "\n")
    parts = [found[i] for i in range(first, last + 1) if i in found]
    below = last + 1
    while parts and below in found and lines[below - 1].lstrip().startswith("#"):
        parts.append(found[below])
        below += 1
    return " ".join(p for p in parts if p)


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)

    def on_attribute_instance(self, *, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is None and attr.lineno is not None and attr.endlineno is not None:
            comment = field_comment(attr.module.lines, attr.lineno, attr.endlineno)
            if comment:
                attr.docstring = griffe.Docstring(plain(comment), parent=attr)
