"""Output files of the commands: checked before any work, written whole or not at all.

``check_outputs`` refuses, before anything is computed, an output path that is one of the
inputs, two outputs that are the same file, and a folder that does not exist or cannot be
written. ``written`` writes through a temporary file in the same folder that replaces the
target only once it is complete, so an error or Ctrl-C leaves either the previous complete
file or the new complete one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path


class OutputError(ValueError):
    """An output path that would destroy a file or cannot be written."""


def check_outputs(outputs: Sequence[Path], inputs: Sequence[Path] = (),
                  folders: Sequence[Path] = ()) -> None:
    """Refuse outputs that are inputs or each other, or whose folder is missing/read-only;
    ``folders`` are output folders (created later if missing: their parent must exist)."""
    resolved_inputs = {p.resolve(): p for p in inputs}
    seen: dict[Path, Path] = {}
    for path in outputs:
        real = path.resolve()
        if real in resolved_inputs:
            raise OutputError(f"output {path} is the input {resolved_inputs[real]}; choose "
                              "another output name (--out / --maps)")
        if real in seen:
            raise OutputError(f"outputs {seen[real]} and {path} are the same file; give the "
                              "images different names or choose another --out")
        seen[real] = path
        _writable_folder(real.parent, path)
    for folder in folders:
        real = folder.resolve()
        if real.exists() and not real.is_dir():
            raise OutputError(f"--out {folder} is a file, not a folder")
        _writable_folder(real if real.exists() else real.parent, folder)


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
