"""``FileSandbox``: read, write and list files, confined to one folder.

Paths come from a model, so they are treated as hostile: a path must be relative, must not contain
``..``, and must still lie inside the folder once symbolic links are resolved. Reads and writes are
capped at ``max_bytes``, and only regular files are read (a FIFO or a device would block or never end).

The sandbox guards against the paths a model writes. It does not guard against another process that
swaps a folder inside the sandbox for a symbolic link between the check and the write; do not share
the folder with code you do not trust.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agentflow import Tool, tool
from agentflow.errors import ConfigurationError, NonRetryableError

__all__ = ["FileSandbox", "FileSandboxError"]


class FileSandboxError(NonRetryableError, ValueError):
    """A path is refused (outside the sandbox), a file is missing, or a size limit is passed."""


class FileSandbox:
    """Three tools confined to ``root``: ``read_file``, ``write_file`` and ``list_files``.

    ``root`` must be an existing folder. ``max_bytes`` caps a read and a write; ``max_entries`` caps a
    listing. The tools are attributes, and ``tools`` holds all three for ``ctx.llm(tools=...)``::

        sandbox = FileSandbox("workspace")
        await ctx.tool(sandbox.write_file, path="notes/plan.md", content="# Plan")
    """

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = 1_000_000, max_entries: int = 1000) -> None:
        folder = Path(root)
        if not folder.is_dir():
            raise ConfigurationError(f"FileSandbox: {str(folder)!r} is not an existing folder; create it first")
        if max_bytes < 1 or max_entries < 1:
            raise ConfigurationError("FileSandbox: max_bytes and max_entries must be at least 1")
        self.root = folder.resolve()
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.read_file = self._read_tool()
        self.write_file = self._write_tool()
        self.list_files = self._list_tool()

    def __repr__(self) -> str:
        return f"FileSandbox({str(self.root)!r}, max_bytes={self.max_bytes})"

    @property
    def tools(self) -> tuple[Tool, Tool, Tool]:
        """``read_file``, ``write_file`` and ``list_files``."""
        return (self.read_file, self.write_file, self.list_files)

    def resolve(self, path: str) -> Path:
        """The absolute path ``path`` names inside the sandbox; ``FileSandboxError`` if it leads outside."""
        if not path or not path.strip():
            raise FileSandboxError("the path is empty; give a path relative to the sandbox folder, like 'notes.txt'")
        if "\x00" in path:
            raise FileSandboxError(f"the path {path!r} contains a NUL character")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud83d"): half a character, as a model cut it
            raise FileSandboxError(
                f"the path {path!r} holds half of a character (a lone surrogate); write it with whole characters"
            ) from None
        given = Path(path)
        if given.is_absolute() or given.anchor:
            raise FileSandboxError(
                f"{path!r} is an absolute path; give a path relative to the sandbox folder, like 'notes.txt'"
            )
        if ".." in given.parts:
            raise FileSandboxError(f"{path!r} goes up with '..'; paths must stay inside the sandbox folder")
        try:
            resolved = (self.root / given).resolve()
        except RuntimeError:
            raise FileSandboxError(f"{path!r} cannot be resolved (a loop of symbolic links)") from None
        except OSError as exc:
            raise FileSandboxError(f"{path!r} cannot be resolved ({_reason(exc)})") from None
        if not resolved.is_relative_to(self.root):
            raise FileSandboxError(f"{path!r} leads outside the sandbox folder through a symbolic link; refused")
        return resolved

    def _shown(self, resolved: Path) -> str:
        """The path relative to the sandbox folder, as the model sees it. A name that is not UTF-8 (left by
        an archive made elsewhere) is shown with U+FFFD for the bytes that are not: a string holding the
        surrogates Python reads such bytes into cannot be recorded as JSON nor sent to a model."""
        shown = resolved.relative_to(self.root).as_posix() or "."
        try:
            shown.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(shown).decode("utf-8", "replace")
        return shown

    def _read_tool(self) -> Tool:
        sandbox = self

        def read_file(path: str) -> str:
            target = sandbox.resolve(path)
            try:
                info = target.stat()
            except (FileNotFoundError, NotADirectoryError):
                raise FileSandboxError(f"there is no file {path!r}; list_files shows the files there are") from None
            except OSError as exc:
                raise FileSandboxError(f"cannot read {path!r}: {_reason(exc)}") from None
            if stat.S_ISDIR(info.st_mode):
                raise FileSandboxError(f"{path!r} is a folder, not a file; list_files lists it")
            if not stat.S_ISREG(info.st_mode):
                raise FileSandboxError(f"{path!r} is not a regular file")
            try:
                with target.open("rb") as f:
                    data = f.read(sandbox.max_bytes + 1)  # never more than the limit, even if the file grows
            except OSError as exc:
                raise FileSandboxError(f"cannot read {path!r}: {_reason(exc)}") from None
            if len(data) > sandbox.max_bytes:
                raise FileSandboxError(f"{path!r} is larger than the {sandbox.max_bytes:,}-byte read limit")
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise FileSandboxError(f"{path!r} is not UTF-8 text; read_file reads only text") from None

        return tool(
            name="read_file",
            description=(
                "Read a UTF-8 text file from the sandbox folder and return its content. `path` is relative to "
                f"the folder, like 'notes/todo.md'. Files larger than {self.max_bytes:,} bytes are refused."
            ),
        )(read_file)

    def _write_tool(self) -> Tool:
        sandbox = self

        def write_file(path: str, content: str) -> str:
            try:
                data = content.encode("utf-8")
            except UnicodeEncodeError:
                raise FileSandboxError(
                    "the content holds half of a character (a lone surrogate), which is not text; write it with "
                    "whole characters"
                ) from None
            if len(data) > sandbox.max_bytes:
                raise FileSandboxError(
                    f"the content is {len(data):,} bytes; the write limit is {sandbox.max_bytes:,} bytes"
                )
            target = sandbox.resolve(path)
            try:
                # The parents are inside the sandbox: the path has no '..' and resolved inside the root.
                info = None if target == sandbox.root else _stat_or_none(target)
                if target == sandbox.root or (info is not None and stat.S_ISDIR(info.st_mode)):
                    shown = path.rstrip("/")
                    raise FileSandboxError(f"{path!r} is a folder; give a file path, like '{shown}/file.txt'")
                if info is not None and not stat.S_ISREG(info.st_mode):
                    raise FileSandboxError(f"{path!r} exists and is not a regular file")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            except OSError as exc:  # a name too long, no room left, no permission
                raise FileSandboxError(f"cannot write {path!r}: {_reason(exc)}") from None
            return f"wrote {len(data):,} bytes to {sandbox._shown(target)}"

        # Idempotent: writing the same content to the same path twice leaves the same file as writing it
        # once, so a retry, or a resumed run that runs an unrecorded write again, is harmless.
        return tool(
            name="write_file",
            idempotent=True,
            description=(
                "Write a UTF-8 text file in the sandbox folder, replacing it if it exists and creating its "
                f"folders. `path` is relative to the folder, like 'notes/todo.md'. At most {self.max_bytes:,} "
                "bytes."
            ),
        )(write_file)

    def _list_tool(self) -> Tool:
        sandbox = self

        def list_files(folder: str = ".") -> list[str]:
            base = sandbox.resolve(folder)
            try:
                info = _stat_or_none(base)
            except OSError as exc:
                raise FileSandboxError(f"cannot list {folder!r}: {_reason(exc)}") from None
            if info is None or not stat.S_ISDIR(info.st_mode):
                raise FileSandboxError(f"{folder!r} is not a folder in the sandbox")
            found: list[str] = []
            # followlinks=False: a linked folder is not entered, so a link cannot widen the listing.
            for current, folders, files in os.walk(base):
                folders.sort()
                for name in sorted(files):
                    found.append(sandbox._shown(Path(current, name)))
                    if len(found) > sandbox.max_entries:
                        raise FileSandboxError(
                            f"{folder!r} holds more than {sandbox.max_entries:,} files; list a subfolder instead"
                        )
            return sorted(found)

        return tool(
            name="list_files",
            description=(
                "List the files under a folder of the sandbox, recursively, as paths relative to the sandbox "
                "folder. `folder` defaults to the whole sandbox ('.')."
            ),
        )(list_files)


def _stat_or_none(path: Path) -> os.stat_result | None:
    """``path.stat()``, or None when there is nothing there; other failures raise ``OSError``."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _reason(exc: OSError) -> str:
    """Why an ``OSError`` happened ("File name too long"), without the absolute path it names: the
    message goes to a model and the record, which need not know where the sandbox lives."""
    return exc.strerror or type(exc).__name__
