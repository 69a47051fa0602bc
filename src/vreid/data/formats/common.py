"""File-format helpers shared by the readers: roots, name lists, label XML, track files.

Every function raises :class:`DatasetError` naming the file (and line) of the bad input.
"""

from __future__ import annotations

import logging
import os
import re
import xml.parsers.expat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vreid.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*\?>", re.S)
_XML_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def find_root(root: str | Path, subdirs: Sequence[str], marker: str) -> Path:
    """The dataset folder: ``root`` itself or one of ``root/<subdir>``, whichever holds ``marker``.

    Lets users point at either the release folder or the folder above it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("dataset root does not exist or is not a folder", path=root)
    for candidate in (root, *(root / s for s in subdirs)):
        if (candidate / marker).exists():
            return candidate
    tried = ", ".join(str(root / s / marker) for s in ("", *subdirs))
    raise DatasetError(f"not a dataset folder: expected {marker!r} (looked for {tried})", path=root)


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"missing {what}", path=path)
    return path


def list_images(folder: Path) -> set[str]:
    """File names in ``folder`` (one directory listing, so existence checks cost nothing per image)."""
    if not folder.is_dir():
        raise DatasetError("missing image folder", path=folder)
    return set(os.listdir(folder))


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank, stripped lines with their 1-based line numbers (the last line may lack a newline)."""
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{what} is not UTF-8 text ({exc.reason})", path=path) from None
    return [(i, s) for i, line in enumerate(text.splitlines(), 1) if (s := line.strip())]


def read_name_list(path: Path, what: str = "image name list") -> list[tuple[int, str]]:
    """An image name list (one name per line), refusing duplicates."""
    lines = read_lines(path, what)
    seen: dict[str, int] = {}
    for lineno, name in lines:
        if name in seen:
            raise DatasetError(f"duplicate image name {name!r} (first listed on line {seen[name]})", path, lineno)
        seen[name] = lineno
    return lines


def check_images_exist(
    names: Iterable[tuple[int, str]], folder: Path, list_path: Path, existing: set[str] | None = None
) -> None:
    """Every listed name must be a file in ``folder``; the error names the list file and line."""
    existing = list_images(folder) if existing is None else existing
    for lineno, name in names:
        if name not in existing:
            raise DatasetError(f"lists image {name!r}, which is not in {folder}", list_path, lineno)


@dataclass(frozen=True)
class XmlItem:
    line: int
    attrs: dict[str, str]


def read_label_xml(path: Path, element: str = "Item") -> list[XmlItem]:
    """All ``<Item .../>`` elements of a VeRi/AIC-style label XML, with their line numbers.

    The releases declare ``encoding="gb2312"``, which Python's expat refuses ("multi-byte encodings
    are not supported"): we decode the bytes ourselves with the declared codec (gb18030, a superset,
    for gb2312/gbk) and hand expat text.
    """
    require_file(path, "label XML")
    raw = path.read_bytes()
    encoding = "utf-8"
    decl = _XML_DECL.match(raw)
    if decl:
        m = _XML_ENCODING.search(decl.group(0))
        if m:
            encoding = m.group(1).decode("ascii").lower()
        raw = raw[: decl.start()] + raw[decl.end() :]  # keeps the newline, so line numbers stay right
    if encoding in ("gb2312", "gbk", "gb18030"):
        encoding = "gb18030"
    try:
        text = raw.decode(encoding)
    except (LookupError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot decode label XML as {encoding}: {exc}", path=path) from None

    items: list[XmlItem] = []
    parser = xml.parsers.expat.ParserCreate()

    def start(name: str, attrs: dict[str, str]) -> None:
        if name == element:
            items.append(XmlItem(parser.CurrentLineNumber, dict(attrs)))

    parser.StartElementHandler = start
    try:
        parser.Parse(text, True)
    except xml.parsers.expat.ExpatError as exc:
        msg = xml.parsers.expat.ErrorString(exc.code)
        raise DatasetError(f"malformed XML: {msg} (column {exc.offset})", path, exc.lineno) from None
    return items


def require_attr(item: XmlItem, key: str, path: Path) -> str:
    value = item.attrs.get(key)
    if value is None or not value.strip():
        raise DatasetError(f"<Item> lacks the {key!r} attribute (has {sorted(item.attrs)})", path, item.line)
    return value.strip()


def labels_by_name(path: Path, required: Sequence[str] = ("imageName",)) -> dict[str, XmlItem]:
    """Label XML items keyed by imageName, refusing duplicate names and items lacking ``required``."""
    out: dict[str, XmlItem] = {}
    for item in read_label_xml(path):
        for key in required:
            require_attr(item, key, path)
        name = item.attrs["imageName"].strip()
        if name in out:
            raise DatasetError(f"duplicate imageName {name!r} (first on line {out[name].line})", path, item.line)
        out[name] = item
    return out


def read_tracks(path: Path, has_key: bool, prefix: str = "") -> dict[str, str]:
    """Image name -> track id from a track file (one tracklet per line).

    AIC21 lines hold only image names; VeRi-776 lines start with a ``<vid>_c<cam>`` key. The track id
    is ``prefix`` + the line number (keys may repeat, line numbers do not). An image listed in two
    tracks keeps its first and a warning is logged.
    """
    tracks: dict[str, str] = {}
    repeated = 0
    for lineno, line in read_lines(path, "track file"):
        names = line.split()
        if has_key:
            names = names[1:]
        for name in names:
            if name in tracks:
                repeated += 1
                continue
            tracks[name] = f"{prefix}{lineno}"
    if repeated:
        log.warning("%s: %d image names appear in more than one track; kept the first", path, repeated)
    return tracks


def parse_float(value: str | None, what: str, path: Path, line: int) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise DatasetError(f"{what} must be a number, got {value!r}", path, line) from None
