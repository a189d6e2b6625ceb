"""The docs cannot drift: their snippets run, their links resolve, the API reference is current.

- Every ```python block in README.md and docs/*.md runs. The blocks of one file run in order in
  one namespace (a later block may use an earlier one's names), in a scratch folder. A block
  that cannot run here (it needs downloaded weights or a user's file) is preceded by the line
  ``<!-- not-run: the reason -->``; such blocks are still compiled.
- Every relative link in README.md, docs/*.md and tutorials/README.md names a file or folder
  of this repository, and every ``#anchor`` is a heading of its target (GitHub's slugs).
- docs/api.md equals what docs/generate_api.py writes from the docstrings (``make docs``).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # snippets may draw; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SNIPPET_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_PAGES = [*SNIPPET_PAGES, ROOT / "tutorials" / "README.md"]
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the block's first code line
    language: str
    code: str
    not_run: str | None  # the reason, when the block is marked not to run


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the not-run mark before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = NOT_RUN.match(previous)
        start = i + 1
        i = start
        while i < len(lines) and not (lines[i].strip().startswith(fence)
                                      and set(lines[i].strip()) == {fence[0]}):
            i += 1
        blocks.append(Block(page, start + 1, opening["info"].lower(), "\n".join(lines[start:i]),
                            mark["reason"] if mark else None))
        i += 1
    return blocks


def python_blocks(page: Path) -> list[Block]:
    return [b for b in fenced_blocks(page) if b.language in ("python", "py")]


def prose(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, as (1-based number, text)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    inside: set[int] = set()
    for block in fenced_blocks(page):
        code_lines = block.code.count("\n") + 1 if block.code else 0
        inside.update(range(block.line - 1, block.line + code_lines + 1))
    return [(n, text) for n, text in enumerate(lines, 1) if n not in inside]


# --- snippets -------------------------------------------------------------------------------

PAGES_WITH_SNIPPETS = [page for page in SNIPPET_PAGES if python_blocks(page)]


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=_rel)
def test_python_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a snippet that writes a file writes it here
    torch.manual_seed(0)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for block in python_blocks(page):
            # Padded so that a traceback names the page's own line numbers.
            code = compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")
            if block.not_run is None:
                exec(code, namespace)  # noqa: S102 - the point of the test
    finally:
        plt.close("all")


def test_the_readme_has_runnable_snippets_and_marks_are_rare():
    runnable = [b for page in SNIPPET_PAGES for b in python_blocks(page) if b.not_run is None]
    marked = [b for page in SNIPPET_PAGES for b in python_blocks(page) if b.not_run is not None]
    assert any(b.page.name == "README.md" for b in runnable)
    assert len(marked) <= len(runnable) // 4, [f"{_rel(b.page)}:{b.line}" for b in marked]


def test_the_snippet_finder_reads_fences_and_marks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\na = 1\n```\n\n<!-- not-run: needs weights -->\n\n"
                    "````python\nb = 2\n```\nc = 3\n````\n\n```bash\nls\n```\n")
    blocks = python_blocks(page)
    assert [(b.line, b.code, b.not_run) for b in blocks] == [
        (4, "a = 1", None), (10, "b = 2\n```\nc = 3", "needs weights")]
    assert [n for n, _ in prose(page)] == [1, 2, 6, 7, 8, 14]


def test_not_run_marks_sit_before_a_python_block():
    """A mark anywhere else (a typo, a block moved away from it) would hide nothing."""
    misplaced = []
    for page in SNIPPET_PAGES:
        marked_lines = {b.line for b in python_blocks(page) if b.not_run is not None}
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, text in enumerate(lines, 1):
            if "not-run" in text:
                after = next((m for m in range(n, len(lines)) if lines[m].strip()), None)
                if after is None or after + 2 not in marked_lines:
                    misplaced.append(f"{_rel(page)}:{n}")
    assert not misplaced, f"not-run marks not followed by a ```python block: {misplaced}"


# --- links ----------------------------------------------------------------------------------

INLINE_CODE = re.compile(r"(`+).*?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]"  # [text], which may hold [brackets]
                  r"\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # (target "title")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>[^>\s]+)>?")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"(?P<id>[^\"]+)\"")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped
    (letters, digits, ``_``, ``-`` and spaces kept), spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, text in prose(page):
        for html in HTML_ID.finditer(text):
            found.add(html["id"])
        heading = HEADING.match(text)
        if not heading:
            continue
        base = slug(heading["text"])
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    found = []
    for n, text in prose(page):
        text = INLINE_CODE.sub("", text)
        found += [(n, m["target"]) for m in LINK.finditer(text)]
        found += [(n, m["target"]) for m in REFERENCE.finditer(text)]
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for n, target in links(page):
        where = f"{_rel(page)}:{n}: {target}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (ROOT / path_part.lstrip("/")) if path_part.startswith("/") else (
            page.parent / path_part if path_part else page)
        path = path.resolve()
        if not path.is_relative_to(ROOT):
            problems.append(f"{where} (outside the repository: users do not have it)")
        elif not path.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{where} (no heading with the anchor #{anchor} in {_rel(path)})")
    return problems


@pytest.mark.parametrize("page", LINKED_PAGES, ids=_rel)
def test_relative_links_resolve(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_link_checker_sees_links_and_anchors():
    readme = ROOT / "README.md"
    assert len(links(readme)) >= 5
    assert slug("Model zoo and scenes dataset") == "model-zoo-and-scenes-dataset"
    assert slug("`captum_fgcam.metrics` (functions)") == "captum_fgcammetrics-functions"
    assert slug("A.D. / A.I.: *better*, 1.5x") == "ad--ai-better-15x"


# --- the API reference ----------------------------------------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("generate_api", ROOT / "docs" / "generate_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_generated_from_the_docstrings():
    expected = _generator().generate()
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert committed == expected, (
        "docs/api.md differs from the docstrings: run `make docs` and commit docs/api.md")


def test_api_reference_covers_every_public_name():
    import captum_fgcam
    import captum_fgcam.metrics
    import captum_fgcam.propagation

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    for module in (captum_fgcam, captum_fgcam.propagation, captum_fgcam.metrics):
        for name in module.__all__:
            assert f"`{name}`" in text or f".{name}`" in text, f"{module.__name__}.{name}"
