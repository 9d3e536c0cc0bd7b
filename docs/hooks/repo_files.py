"""MkDocs hook: links from a docs page to a file elsewhere in the repository (`../benchmarks/results/x.md`,
`../recipes/ropo.yaml`) work on GitHub as they are, but point outside `docs/`, which `mkdocs build --strict` refuses.
This hook copies each such file into the site under `repo/` and points the link there, so one link works in both
places. A link to a file that does not exist is left alone, and the strict build reports it."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

# ](target) or ](target#anchor) of a Markdown link or image, where target leaves docs/ through `../`.
LINK = re.compile(r"\]\(((?:\.\./)+[^)\s#]+)(#[^)\s]*)?\)")
PREFIX = "repo"


def _repo_file(docs_dir: Path, page_src_uri: str, target: str) -> Path | None:
    """The repository file a page's `../` link names, or None if it stays in docs/ or names nothing."""
    resolved = (docs_dir / page_src_uri).parent.joinpath(target).resolve()
    root = docs_dir.parent.resolve()
    inside_repo = resolved.is_relative_to(root) and not resolved.is_relative_to(docs_dir.resolve())
    return resolved if inside_repo and resolved.is_file() else None


def on_files(files, config):
    docs_dir = Path(config["docs_dir"])
    root = docs_dir.parent.resolve()
    wanted: set[Path] = set()
    for page in files.documentation_pages():
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for target, _ in LINK.findall(text):
            found = _repo_file(docs_dir, page.src_uri, target)
            if found:
                wanted.add(found)
    for path in sorted(wanted):
        files.append(File.generated(config, f"{PREFIX}/{path.relative_to(root).as_posix()}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"])
    root = docs_dir.parent.resolve()
    page_dir = (docs_dir / page.file.src_uri).parent

    def relink(match: re.Match) -> str:
        target, anchor = match.group(1), match.group(2) or ""
        found = _repo_file(docs_dir, page.file.src_uri, target)
        if not found:
            return match.group(0)
        copy = docs_dir / PREFIX / found.relative_to(root)
        return f"]({Path(_relpath(copy, page_dir)).as_posix()}{anchor})"

    return LINK.sub(relink, markdown)


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)
