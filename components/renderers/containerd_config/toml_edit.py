"""Editing the config.toml document with tomlkit, keeping comments and layout: entries removed
(a table's text cut out, its trailing comments kept for the next table), ``config_path`` set where
the file's own style puts it (table, inline table or dotted keys). Pure: no ``import pulumi``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.items import Comment, InlineTable, Item, Table, Trivia, Whitespace

from components.renderers.containerd_config.versions import ConfigParseError

# --- editing the document (keeps comments and layout) --------------------------------------------


def _entries(
    container: Container, path: tuple[str, ...], inline: InlineTable | None = None
) -> Iterator[tuple[Container, int, tuple[str, ...], InlineTable | None]]:
    """Every keyed entry below ``container`` with its full key path (and the inline table that
    holds it, if any), depth first."""
    for index, (key, item) in enumerate(list(container.body)):
        if key is None:
            continue
        full = (*path, key.key)
        yield container, index, full, inline
        if isinstance(item, InlineTable):
            yield from _entries(item.value, full, item)
        elif isinstance(item, Table):
            yield from _entries(item.value, full, inline)


def _first_rendered(item: Item) -> Item:
    """The item whose indent is written first when ``item`` is rendered (super tables have no
    header of their own: their first descendant's header or key line comes first)."""
    while isinstance(item, Table) and item.is_super_table():
        keyed = [child for key, child in item.value.body if key is not None]
        if not keyed:
            break
        item = keyed[0]
    return item


def _last_table_body(table: Table) -> Container:
    """The body rendered last for ``table``: its trailing comments sit above the NEXT table."""
    body = table.value
    while body.body and isinstance(body.body[-1][1], Table):
        body = body.body[-1][1].value
    return body


def _mark_for_cut(item: Table, start: str, end: str) -> None:
    """Wrap a table's text in marker lines; the text between them is cut after rendering.

    Deleting the table from tomlkit's tree instead would lose the comments tomlkit attached to
    it that belong to the next table, and an emptied super table would grow a header.
    """
    first = _first_rendered(item)
    first.trivia.indent = f"{start}\n{first.trivia.indent}"
    body = _last_table_body(item)
    position = len(body.body)
    while position > 0:
        key, trailing = body.body[position - 1]
        if key is not None or not isinstance(trailing, Comment | Whitespace):
            break
        position -= 1
    body.body.insert(position, (None, Comment(Trivia(comment=end, trail="\n"))))


def _remove(document: tomlkit.TOMLDocument, targets: set[tuple[str, ...]], cut: str) -> str:
    """Render ``document`` without the entries at ``targets`` (comments of others kept)."""
    start, end = f"{cut}-start", f"{cut}-end"
    marked: set[int] = set()
    while True:
        found = next(
            (
                e
                for e in _entries(document, ())
                if e[2] in targets and id(e[0].body[e[1]][1]) not in marked
            ),
            None,
        )
        if found is None:
            break
        container, index, full, inline = found
        key, item = container.body[index]
        if inline is not None:
            # tomlkit re-renders an inline table (commas) itself when a key is deleted.
            owner: Any = inline
            for part in full[len(_path_of(document, inline)) : -1]:
                owner = owner[part]
            del owner[full[-1]]
        elif isinstance(item, Table) and not (key is not None and key.is_dotted()):
            _mark_for_cut(item, start, end)
            marked.add(id(item))
        else:
            # A key/value line (or dotted keys): its comment is on its own line, nothing to keep.
            del container.body[index]
    return _cut(document.as_string(), start, end)


def _path_of(document: tomlkit.TOMLDocument, inline: InlineTable) -> tuple[str, ...]:
    for container, index, full, _ in _entries(document, ()):
        if container.body[index][1] is inline:
            return full
    raise LookupError("inline table not in document")


def _cut(text: str, start: str, end: str) -> str:
    out: list[str] = []
    cutting = False
    after_cut = False
    for line in text.splitlines(keepends=True):
        marker = line.strip()
        if marker == start:
            cutting = True
            continue
        if marker == end:
            cutting = False
            after_cut = True
            continue
        if cutting:
            continue
        if after_cut and not marker and out and not out[-1].strip():
            # the blank line before the removed table stays; do not double it
            after_cut = False
            continue
        after_cut = False
        out.append(line)
    return "".join(out)


def _set_config_path(document: tomlkit.TOMLDocument, path: tuple[str, ...], value: str) -> str:
    target = (*path, "config_path")
    for container, index, full, _ in _entries(document, ()):
        if full == target:
            key, old = container.body[index]
            new = tomlkit.string(value)
            new.trivia.indent = old.trivia.indent
            new.trivia.comment_ws = old.trivia.comment_ws
            new.trivia.comment = old.trivia.comment
            new.trivia.trail = old.trivia.trail
            container.body[index] = (key, new)
            return document.as_string()
    for container, index, full, _ in _entries(document, ()):
        item = container.body[index][1]
        if full != path:
            continue
        if isinstance(item, InlineTable):
            item["config_path"] = value
            return document.as_string()
        if isinstance(item, Table) and not item.is_super_table():
            _insert_key(item, "config_path", value)
            return document.as_string()
    if _insert_dotted(document, path, value):
        return document.as_string()
    # No explicit registry table: a new header at the end is valid TOML unless a parent was
    # written inline or with dotted keys (then containerd users would be surprised anyway).
    for container, index, full, _ in _entries(document, ()):
        item = container.body[index][1]
        key = container.body[index][0]
        if full == path[: len(full)] and (
            isinstance(item, InlineTable)
            or (key is not None and key.is_dotted())
            or not isinstance(item, Table)
        ):
            raise ConfigParseError(
                f"cannot add config_path: {'.'.join(full)} is written inline or with dotted keys; "
                "write it as a [table] first"
            )
    text = document.as_string()
    header = ".".join(tomlkit.key(part).as_string() for part in path)
    prefix = "" if not text.strip() else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{prefix}[{header}]\n  config_path = {tomlkit.string(value).as_string()}\n"


def _header_bodies(
    container: Container, path: tuple[str, ...]
) -> Iterator[tuple[Container, tuple[str, ...]]]:
    """The document and every table written with a [header]: where dotted-key lines live."""
    yield container, path
    for key, item in container.body:
        if key is not None and isinstance(item, Table) and not key.is_dotted():
            yield from _header_bodies(item.value, (*path, key.key))


def _insert_dotted(document: tomlkit.TOMLDocument, path: tuple[str, ...], value: str) -> bool:
    """Registry written as dotted keys (``registry.configs."x".auth.username = ...``): add
    ``registry.config_path = ...`` after its last such line, in the same table."""
    last: tuple[Container, int, tuple[str, ...]] | None = None
    for body, table_path in _header_bodies(document, ()):
        if table_path != path[: len(table_path)] or len(table_path) >= len(path):
            continue
        for index, (key, _) in enumerate(body.body):
            if key is not None and key.is_dotted() and key.key == path[len(table_path)]:
                last = (body, index, table_path)
    if last is None:
        return False
    body, index, table_path = last
    item = tomlkit.string(value)
    item.trivia.indent = _first_rendered(body.body[index][1]).trivia.indent.lstrip("\n")
    item.trivia.trail = "\n"
    body.body.insert(index + 1, (tomlkit.key([*path[len(table_path) :], "config_path"]), item))
    return True


def _insert_key(table: Table, name: str, value: str) -> None:
    body = table.value.body
    position = 0
    indent = None
    for index, (key, item) in enumerate(body):
        if isinstance(item, Table):
            break
        if key is not None:
            position = index + 1
            indent = item.trivia.indent
    if indent is None:
        header_indent = table.trivia.indent.replace("\n", "")
        indent = header_indent + ("  " if header_indent or table.name else "")
    item = tomlkit.string(value)
    item.trivia.indent = indent
    item.trivia.trail = "\n"
    body.insert(position, (tomlkit.key(name), item))
    # tomlkit's key index is stale now; the caller only renders this document.
