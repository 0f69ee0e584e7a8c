"""Checks for HTML pages: well formed (every element closed in order) and self-contained."""

from __future__ import annotations

import re
from html.parser import HTMLParser

#: Elements that have no end tag.
VOID = {
    "meta",
    "br",
    "hr",
    "img",
    "input",
    "link",
    "rect",
    "circle",
    "line",
    "polyline",
    "polygon",
    "path",
}


class Structure(HTMLParser):
    """Checks that every element closes in order; records tags, attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def parsed(page: str) -> Structure:
    structure = Structure()
    structure.feed(page)
    structure.close()
    assert structure.open == [], f"unclosed: {structure.open}"
    return structure


def assert_self_contained(page: str, structure: Structure) -> None:
    assert not re.search(r"https?://|//[a-z]", page)
    # a link within the page (#model-2) is the only reference allowed
    assert not any(name == "src" for name, _ in structure.attributes)
    assert all(
        (value or "").startswith("#") for name, value in structure.attributes if name == "href"
    )
    assert "<script" not in page
