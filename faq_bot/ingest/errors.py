"""The one error of ingestion: it names the uploaded file, the place in it, and how to fix it."""

from __future__ import annotations

from pathlib import PureWindowsPath

__all__ = ["IngestError", "display_name"]


def display_name(name: str) -> str:
    """The file name as the user knows it: directories dropped, so server or temp paths never show."""
    # PureWindowsPath splits on both "/" and "\\", whatever the OS the upload came from.
    return PureWindowsPath(str(name)).name or "upload"


class IngestError(ValueError):
    """A file that cannot be ingested.

    The message reads ``<file> [row R|line L|item I|page P]: <problem and fix>``, e.g.
    ``faq.csv row 7: column `answer` is empty; fill it in or delete the row.``

    Args:
        source: The file name as uploaded; only its last path component is shown.
        problem: What is wrong (naming the column or key in backticks) and how to fix it.
        row: 1-based spreadsheet row (the header is row 1).
        line: 1-based line of a text file (JSONL, CSV parse errors).
        item: 1-based position in a JSON list.
        page: 1-based PDF page.
        field: The column or key concerned, kept for UIs that highlight it.
    """

    def __init__(
        self,
        source: str,
        problem: str,
        *,
        row: int | None = None,
        line: int | None = None,
        item: int | None = None,
        page: int | None = None,
        field: str | None = None,
    ) -> None:
        self.source = display_name(source)
        self.problem = problem
        self.row, self.line, self.item, self.page, self.field = row, line, item, page, field
        places = (("row", row), ("line", line), ("item", item), ("page", page))
        where = "".join(f" {label} {n}" for label, n in places if n is not None)
        super().__init__(f"{self.source}{where}: {problem}")
