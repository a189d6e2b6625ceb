"""Output files of the commands: checked before any work, written whole or not at all.

``check_outputs`` refuses, before anything is computed, an output that is a file the command
reads (an image, a checkpoint, a weights file) or lies inside a folder it reads (the folder
of images, ImageNet's ``--root``), two outputs that are the same file, and a folder that does
not exist or cannot be written. Paths are compared as files, not as spellings: relative and
absolute paths, ``./`` and ``..``, symbolic links (to the file or to a folder on the path),
hard links (the same device and inode) and, on file systems that ignore case (found by
looking a case-swapped name up, folder by folder), names that differ only in case.
``written`` writes through a temporary file in the same folder that replaces the target only
once it is complete, so an error or Ctrl-C leaves either the previous complete file or the
new complete one.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

#: a path with what it is for the messages: ("--maps", path) for an output, ("the image",
#: path) for an input; a bare path is called "output" / "input"
Named = tuple[str, Path]


class OutputError(ValueError):
    """An output path that would destroy a file or cannot be written."""


def check_outputs(outputs: Sequence[Path | Named], inputs: Sequence[Path | Named] = (),
                  folders: Sequence[Path | Named] = ()) -> None:
    """Refuse, before any work, outputs that are inputs or each other or whose folder is
    missing or read-only.

    ``outputs`` are files written, ``folders`` output folders (created later if missing:
    their parent must exist), ``inputs`` every file and folder the command reads; an output
    inside an input folder, or an output folder that is one or lies inside one, is refused
    too. Each may be named by the option that gave it, e.g. ``("--maps", path)``; messages
    name both paths and the option to change.
    """
    named_outputs = [_named(o, "output") for o in outputs]
    named_folders = [_named(f, "output folder") for f in folders]
    named_inputs = [_named(i, "input") for i in inputs]
    case = _CaseProbe()
    input_files = {}
    input_folders = []
    for what, path in named_inputs:
        if path.is_dir():
            input_folders.append((what, path, _identity(path, case)))
        else:
            input_files.setdefault(_identity(path, case), (what, path))
    for option, folder in named_folders:
        real = Path(os.path.realpath(folder))
        if real.exists() and not real.is_dir():
            raise OutputError(f"{option} {folder} is a file, not a folder")
        _outside(option, folder, input_folders, case, itself=True)
        _writable_folder(real if real.exists() else real.parent, folder)
    created = {_identity(folder, case) for _, folder in named_folders}  # checked above
    seen: dict[tuple, Named] = {}
    for option, path in named_outputs:
        if path.is_dir():
            raise OutputError(f"{option} {path} is a folder; give a file name")
        key = _identity(path, case)
        if key in input_files:
            what, source = input_files[key]
            raise OutputError(f"{option} {path} is {what} ({source}), which would be "
                              f"overwritten; choose another {option}")
        if key in seen:
            first, other = seen[key]
            raise OutputError(f"{first} {other} and {option} {path} are the same file; "
                              f"choose another {option}")
        seen[key] = (option, path)
        _outside(option, path, input_folders, case)
        if _identity(path.parent, case) not in created:
            _writable_folder(Path(os.path.realpath(path)).parent, path)


def _named(item: Path | Named, default: str) -> Named:
    return (default, Path(item)) if isinstance(item, (str, os.PathLike)) else item


def _outside(option: str, path: Path, folders: list[tuple[str, Path, tuple]],
             case: _CaseProbe, itself: bool = False) -> None:
    """Refuse ``path`` inside one of ``folders`` (or equal to one, with ``itself``)."""
    real = Path(os.path.realpath(path))
    ancestors = [real] if itself else []
    ancestors += list(real.parents)
    keys = {_identity(p, case) for p in ancestors if p.exists()}
    for what, folder, key in folders:
        if key in keys:
            where = "is" if itself and _identity(path, case) == key else "is inside"
            raise OutputError(f"{option} {path} {where} {what} {folder}, which the command "
                              f"reads; choose another {option} outside {folder}")


def _identity(path: Path, case: _CaseProbe) -> tuple:
    """What ``path`` designates, whatever its spelling: an existing file or folder's device
    and inode; otherwise its nearest existing folder's device and inode and the names below
    it (case-folded where that folder ignores case)."""
    real = Path(os.path.realpath(path))
    with contextlib.suppress(OSError):
        st = os.stat(real)
        return ("file", st.st_dev, st.st_ino)
    names: list[str] = []
    folder = real
    while True:
        names.insert(0, folder.name)
        folder = folder.parent
        try:
            st = os.stat(folder)
            break
        except OSError:
            if folder == folder.parent:
                return ("path", str(real))
    if case.insensitive(folder):
        names = [n.casefold() for n in names]
    return ("new", st.st_dev, st.st_ino, tuple(names))


class _CaseProbe:
    """Whether a folder looks names up without regard to case, found once per folder by
    looking up a case-swapped spelling of a name in it (or of the folder in its parent)."""

    def __init__(self) -> None:
        self.found: dict[Path, bool] = {}

    def insensitive(self, folder: Path) -> bool:
        if folder not in self.found:
            self.found[folder] = self._probe(folder)
        return self.found[folder]

    @staticmethod
    def _probe(folder: Path) -> bool:
        names: list[tuple[Path, str]] = []
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            names += [(folder, e.name) for e in itertools.islice(entries, 64)]
        names += [(p.parent, p.name) for p in (folder, *folder.parents) if p.name]
        for parent, name in names:
            swapped = name.swapcase()
            if swapped == name or swapped.swapcase() != name:  # no letters, or "ß" -> "SS"
                continue
            try:
                original = os.lstat(parent / name)
            except OSError:
                continue
            try:
                other = os.lstat(parent / swapped)
            except FileNotFoundError:
                return False
            except OSError:
                continue
            return (other.st_dev, other.st_ino) == (original.st_dev, original.st_ino)
        return True  # no name to test: assume the case is ignored (refuses more, never less)


def _writable_folder(folder: Path, path: Path) -> None:
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {folder} is not writable")


@contextlib.contextmanager
def written(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to (same folder and suffix); it replaces
    ``path`` when the block ends without an error and is removed otherwise."""
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
