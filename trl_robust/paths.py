"""Small path facts shared by the commands and the audit: is a name a local path, and is a directory in use."""

from pathlib import Path

# A name ending in one of these is a data file on disk, never a Hub id.
_DATA_FILE_SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".tsv"}


def looks_like_local_path(value: str) -> bool:
    """True where `value` is neither a Hub id (`name`, `owner/name`) nor a URL (`hf://...`): it must be on disk."""
    if "://" in value:
        return False
    return (
        value.startswith(("/", ".", "~"))
        or value.count("/") > 1
        or "\\" in value
        or Path(value).suffix.lower() in _DATA_FILE_SUFFIXES
    )


def listing_if_not_empty(directory: Path) -> str | None:
    """The first few names in `directory` ("a, b, ..."), or None if it does not exist or is empty."""
    if not directory.is_dir():
        return None
    contents = sorted(p.name for p in directory.iterdir())
    if not contents:
        return None
    return ", ".join(contents[:5]) + (", ..." if len(contents) > 5 else "")
