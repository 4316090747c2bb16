"""Heading-aware chunking: blocks -> chunks that fit the doc encoder, cut at sentence ends, never across sections."""

from __future__ import annotations

import logging
import re
from typing import Callable, Iterable

from faq_bot.ingest.readers import Block
from faq_bot.schema import Chunk

__all__ = ["chunk_blocks"]

logger = logging.getLogger(__name__)

# A sentence ends after Chinese 。！？； (closing quotes/brackets kept with it), after English .!?; followed by
# whitespace or the end (so 3.14 and e-mail addresses stay whole), or at a line break.
_SENTENCE_END = re.compile(r"[。！？；]+[”’\"'）)」』】]*\s*|[.!?;]+[”’\"')\]]*(?:\s+|$)|\n+")


def chunk_blocks(
    blocks: Iterable[Block],
    *,
    doc_id: str,
    source: str,
    count_tokens: Callable[[str], int],
    chunk_tokens: int,
    overlap: int,
) -> list[Chunk]:
    """Split a document's blocks into chunks, one heading section at a time.

    Each chunk carries its heading path (outermost first) and fits `chunk_tokens` as measured by
    `count_tokens(chunk.embed_text())`, i.e. including the heading path prefix. Sections are cut at
    sentence ends; a sentence too long on its own is cut by characters. Consecutive chunks of a section
    share whole sentences from the end of the previous chunk, up to `overlap` tokens. Headings without
    body text produce no chunk.

    Args:
        blocks: Reader output, in reading order.
        doc_id: Chunk ids are f"{doc_id}:{position}", positions 0..n-1 over the document.
        source: The document's file name, copied to each chunk.
        count_tokens: The doc encoder's token counter.
        chunk_tokens: Most tokens per chunk, heading path included.
        overlap: Most tokens repeated from the previous chunk of the same section.

    Raises:
        ValueError: `chunk_tokens` < 1 or `overlap` outside [0, chunk_tokens).
    """
    if chunk_tokens < 1:
        raise ValueError(f"`chunk_tokens` must be > 0, got {chunk_tokens}.")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"`overlap` must be >= 0 and < `chunk_tokens` ({chunk_tokens}), got {overlap}.")
    splitter = _SectionSplitter(count_tokens, chunk_tokens, overlap)
    chunks: list[Chunk] = []

    def emit(path: list[str], texts: list[str]) -> None:
        body = "\n".join(texts)
        if not body.strip():
            return
        path = splitter.fit_path(path)
        for text in splitter.split(path, body):
            chunks.append(Chunk(id=f"{doc_id}:{len(chunks)}", doc_id=doc_id, text=text, heading_path=path,
                                source=source, position=len(chunks)))

    stack: list[tuple[int, str]] = []  # (level, heading text), outermost first
    texts: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            emit([t for _, t in stack], texts)
            texts = []
            heading = " ".join(block.text.split())
            if not heading:
                continue
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, heading))
        elif block.text.strip():
            texts.append(block.text.strip("\n"))
    emit([t for _, t in stack], texts)
    return chunks


def _sentences(text: str) -> list[str]:
    """Sentences with their trailing separators, so that joining them gives back the text."""
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.end() == start:
            continue
        piece = text[start:m.end()]
        if piece.strip() or not out:
            out.append(piece)
        else:
            out[-1] += piece
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return [s for s in out if s.strip()]


class _SectionSplitter:
    """Packs one section's sentences into chunks under the token limit."""

    def __init__(self, count_tokens: Callable[[str], int], chunk_tokens: int, overlap: int) -> None:
        self.count = count_tokens
        self.limit = chunk_tokens
        self.overlap = overlap

    def _fits(self, path: list[str], units: list[str]) -> bool:
        body = "".join(units).strip()
        return self.count(Chunk.model_construct(text=body, heading_path=path).embed_text()) <= self.limit

    def fit_path(self, path: list[str]) -> list[str]:
        """Shorten a heading path that would leave less than half the budget for the body."""
        budget = self.limit // 2
        path = list(path)

        def prefix_tokens(p: list[str]) -> int:
            return self.count(" > ".join(p) + "\n") if p else 0

        if prefix_tokens(path) <= budget:
            return path
        while len(path) > 1 and prefix_tokens(path) > budget:
            path.pop(0)  # the innermost headings say most about the text under them
        if prefix_tokens(path) > budget:
            heading = path[0]
            lo, hi = 0, len(heading)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if prefix_tokens([heading[:mid]]) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            path = [heading[:lo]] if lo else []
        logger.debug("heading path shortened to %r to fit %d tokens", path, self.limit)
        return path

    def _hard_split(self, path: list[str], text: str) -> list[str]:
        """Cut a sentence too long for one chunk by characters, at a space when one is near the cut."""
        pieces = []
        rest = text
        while rest.strip():
            if self._fits(path, [rest]):
                pieces.append(rest)
                break
            # Longest prefix that fits: gallop to a bound first, so each cut costs O(piece), not O(rest).
            lo, hi = 1, min(len(rest), 4 * self.limit)
            while hi < len(rest) and self._fits(path, [rest[:hi]]):
                lo, hi = hi, min(len(rest), 2 * hi)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._fits(path, [rest[:mid]]):
                    lo = mid
                else:
                    hi = mid - 1
            space = rest.rfind(" ", 0, lo + 1)
            cut = space + 1 if space > lo // 2 else lo
            pieces.append(rest[:cut])
            rest = rest[cut:]
        return pieces

    def _tail(self, units: list[str]) -> list[str]:
        """Whole sentences from the end of a chunk, up to `overlap` tokens."""
        tail: list[str] = []
        for unit in reversed(units):
            if self.count("".join([unit, *tail]).strip()) > self.overlap:
                break
            tail.insert(0, unit)
        return tail

    def split(self, path: list[str], body: str) -> list[str]:
        units: list[str] = []
        for sentence in _sentences(body):
            units.extend([sentence] if self._fits(path, [sentence]) else self._hard_split(path, sentence))
        groups: list[list[str]] = []
        current: list[str] = []
        for unit in units:
            if not current or self._fits(path, [*current, unit]):
                current.append(unit)
                continue
            groups.append(current)
            tail = self._tail(current) if self.overlap else []
            while tail and not self._fits(path, [*tail, unit]):
                tail.pop(0)
            current = [*tail, unit]
        if current:
            groups.append(current)
        return ["".join(g).strip() for g in groups]
