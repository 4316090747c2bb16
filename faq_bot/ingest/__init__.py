"""Ingestion: read FAQ tables and documents from uploads, and cut documents into heading-aware chunks."""

from faq_bot.ingest.chunking import chunk_blocks
from faq_bot.ingest.errors import IngestError
from faq_bot.ingest.readers import (DOC_KINDS, FAQ_KINDS, Block, decode_text, file_size_error, read_document,
                                    read_faqs, sniff_kind, upload_size_error)

__all__ = ["Block", "DOC_KINDS", "FAQ_KINDS", "IngestError", "chunk_blocks", "decode_text", "file_size_error",
           "read_document", "read_faqs", "sniff_kind", "upload_size_error"]
