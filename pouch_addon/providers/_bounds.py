"""Upper bounds of input tokens for providers whose tokenizer is not public. Pure.

Every token of a byte-level BPE (Anthropic) or a SentencePiece model with byte fallback (Gemini)
stands for at least one byte of the text it encodes, so the UTF-8 length of a request's JSON
bounds the tokens of the text in it from above; the JSON syntax around each message, part and
tool is longer than the template tokens the provider renders it as. Media are not text: images
get a fixed bound each, and what pouch cannot measure (a PDF, a video, a file reference) is
named so the caller bounds the input by the model's context window.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Media", "reserved_input", "strip_media", "utf8_len"]


@dataclass
class Media:
    images: int = 0
    text_bytes: int = 0  # plain-text documents, counted by their bytes
    hidden: list[str] = field(default_factory=list)  # what cannot be measured

    def hide(self, what: str) -> None:
        if what not in self.hidden:
            self.hidden.append(what)


def reserved_input(estimate: int, hidden: list[str], price: Any, model: str) -> tuple[int, list[str]]:
    """The input tokens to reserve and the plan's notes: the bound, or the model's context window
    when the input holds what cannot be measured (refused when the window is unknown); never more
    than the window (the provider refuses longer input)."""
    from ..plan import _unbounded  # plan imports nothing from here: no cycle at import time

    window = price.max_input_tokens
    notes: list[str] = []
    if hidden:
        if window is None:
            raise _unbounded(f"cannot bound the input of this request for {model}: its context window is unknown "
                             f"and the body does not show all of it ({', '.join(hidden)})")
        notes.append(f"input bounded by the context window ({', '.join(hidden)})")
        return window, notes
    return (estimate if window is None else min(estimate, window)), notes


def utf8_len(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON of ``value`` (lone surrogates kept, never an error)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def strip_media(value: Any, media: Media, *, image_types: tuple[str, ...] = (),
                document_types: tuple[str, ...] = ()) -> Any:
    """A copy of ``value`` without media payloads, which are tallied in ``media`` instead.

    Anthropic blocks (``{"type": "image" | "document", "source": ...}``): an image counts once
    whatever its source; a document is text (``source.type`` ``text``: its bytes; ``content``:
    its blocks, walked) or hidden (a PDF, a URL, a file id). Gemini parts (``inlineData`` /
    ``fileData``): hidden (audio, video and PDFs are billed by duration or pages, and an image's
    tiles depend on its size)."""
    if isinstance(value, list):
        return [strip_media(v, media, image_types=image_types, document_types=document_types) for v in value]
    if not isinstance(value, Mapping):
        return value
    kind = value.get("type")
    if kind in image_types:
        media.images += 1
        return {k: v for k, v in value.items() if k != "source"}
    if kind in document_types:
        source = value.get("source")
        src = source.get("type") if isinstance(source, Mapping) else None
        rest = {k: v for k, v in value.items() if k != "source"}
        if src == "text" and isinstance(source.get("data"), str):  # type: ignore[union-attr]
            media.text_bytes += utf8_len(source["data"])  # type: ignore[index]
            return rest
        if src == "content":
            rest["source"] = strip_media(source.get("content"), media, image_types=image_types,  # type: ignore[union-attr]
                                         document_types=document_types)
            return rest
        media.hide(f"a {src or 'document'} document" if src != "base64" else "a PDF document")
        return rest
    out = {}
    for key, item in value.items():
        if key in ("inlineData", "inline_data"):
            mime = item.get("mimeType", item.get("mime_type")) if isinstance(item, Mapping) else None
            media.hide(f"inline {mime or 'data'}")
            continue
        if key in ("fileData", "file_data"):
            media.hide("a file reference")
            continue
        out[key] = strip_media(item, media, image_types=image_types, document_types=document_types)
    return out
