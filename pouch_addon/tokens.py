"""Token counts before and during a call: offline tiktoken encodings, prompt estimates, streams.

Pure core. The only I/O is reading the two encoding files shipped in `pouch_addon/encodings/`;
tiktoken never downloads anything here. Prompt estimates follow the OpenAI cookbook "How to count
tokens with tiktoken" (both versions, see section 4 of the wire formats reference): they size the
budget reservation, and settlement always uses the provider's reported usage. Each estimate
also has a bounded form (``exact=False``): the same formula with every text counted as its
UTF-8 bytes, never below the exact count and needing no encoding (issue 16: an encoding costs
~41 MiB resident, so the proxy loads one only when an exact count matters). tiktoken itself is
imported only to load an encoding. Streams are counted with :mod:`pouch_addon.compact_bpe`
instead unless tiktoken's encoding is loaded anyway: the same counts from a ~5 MiB table
(``stream_ready``, ``preload_stream``).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import hashlib
import importlib.resources
import io
import json
import math
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .compact_bpe import CompactBPE, suspect
from .images import KNOWN_DETAILS, bare_model, has_rule, image_size_from_data_url, image_tokens

if TYPE_CHECKING:
    import regex
    import tiktoken

__all__ = [
    "SHIPPED_SHA256", "EncodingFileError", "get_encoding", "encoding_for_model", "count_text",
    "estimate_chat_prompt", "estimate_responses_input", "estimate_completion_prompt",
    "estimate_embedding_input", "audio_tokens_bound", "hidden_inputs", "StreamTokenCounter",
    "NotLoaded", "loaded_only", "is_loaded", "loaded_for", "preload", "stream_ready", "preload_stream",
]

# tiktoken's published SHA-256 of each file (tiktoken_ext/openai_public.py).
SHIPPED_SHA256: dict[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
O200K, CL100K = "o200k_base", "cl100k_base"


class EncodingFileError(RuntimeError):
    """A shipped encoding file is missing, corrupt or no longer what tiktoken expects."""


class NotLoaded(Exception):
    """Inside `loaded_only()`, an encoding was needed that is not loaded yet (the caller moves
    the work to a worker thread: the first load takes ~0.5-1 s)."""


# ---------------------------------------------------------------------------------------------
# Loading the shipped encodings

@dataclass(frozen=True)
class _Loaded:
    encoding: tiktoken.Encoding
    pieces: regex.Pattern[str]  # tiktoken's pre-tokenizer, for StreamTokenCounter's split points


_LOAD_LOCK = threading.Lock()


def _shipped_file(name: str) -> Any:
    """The shipped `<name>.tiktoken` (an ``importlib.resources`` traversable)."""
    return importlib.resources.files("pouch_addon.encodings") / f"{name}.tiktoken"


def _check_digest(name: str, resource: Any, digest: str) -> None:
    """Refuse a shipped file whose SHA-256 is not tiktoken's published one."""
    if digest != SHIPPED_SHA256[name]:
        raise EncodingFileError(
            f"shipped encoding file {resource} has SHA-256 {digest}, expected tiktoken's "
            f"published {SHIPPED_SHA256[name]}; the file is corrupt or was replaced"
        )


def _read_shipped_ranks(name: str) -> dict[bytes, int]:
    """Parse `<name>.tiktoken` (base64 token, space, rank per line) after checking its SHA-256."""
    resource = _shipped_file(name)
    try:
        data = resource.read_bytes()
    except OSError as exc:
        raise EncodingFileError(f"cannot read shipped encoding file {resource}: {exc}") from exc
    _check_digest(name, resource, hashlib.sha256(data).hexdigest())
    ranks: dict[bytes, int] = {}
    for line in io.BytesIO(data):  # line by line: no list of 200k lines next to the dict (peak RSS)
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _tiktoken_spec(name: str) -> dict[str, Any]:
    """Run tiktoken's own constructor (pattern, special tokens) with the shipped ranks.

    The constructors in `tiktoken_ext.openai_public` hard-code a download URL for the ranks and
    keep the pattern string inside the function, so the only way to read the pattern without
    copying it is to call the constructor with its loader pointed at our file for the duration.
    Any other URL (another thread loading another encoding) goes to tiktoken's loader unchanged.
    """
    import tiktoken_ext.openai_public as openai_public  # here: tiktoken is imported only to load

    original = openai_public.load_tiktoken_bpe

    def shipped_loader(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if url.rsplit("/", 1)[-1] != f"{name}.tiktoken":
            return original(url, expected_hash)
        if expected_hash != SHIPPED_SHA256[name]:
            raise EncodingFileError(
                f"tiktoken now publishes SHA-256 {expected_hash} for {name}.tiktoken but pouch "
                f"ships {SHIPPED_SHA256[name]}; update pouch_addon/encodings/{name}.tiktoken"
            )
        return _read_shipped_ranks(name)

    openai_public.load_tiktoken_bpe = shipped_loader
    try:
        return openai_public.ENCODING_CONSTRUCTORS[name]()
    finally:
        openai_public.load_tiktoken_bpe = original


_LOADED: dict[str, _Loaded] = {}
_NO_LOAD = threading.local()  # .on: this thread may only use encodings already loaded


def _load_unlocked(name: str) -> _Loaded:
    if name not in SHIPPED_SHA256:
        raise ValueError(f"encoding {name!r} is not shipped with pouch (have {sorted(SHIPPED_SHA256)})")
    import regex
    import tiktoken

    spec = _tiktoken_spec(name)
    encoding = tiktoken.Encoding(**spec)
    # The Rust core holds its own copy of the ranks; tiktoken keeps the Python dict only to
    # pickle the encoding, which pouch never does. 200k entries of o200k_base are ~27 MiB of
    # the proxy's resident memory: drop them (a pickle attempt fails loudly, not silently).
    del encoding._mergeable_ranks
    del spec["mergeable_ranks"]
    loaded = _Loaded(encoding=encoding, pieces=regex.compile(spec["pat_str"]))
    trim_heap()
    return loaded


def trim_heap() -> None:
    """Give freed heap back to the OS (glibc): after an encoding's parse (file bytes, lines, a
    200k-entry dict), and once at the proxy's start."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: the memory is reused by later allocations
        pass


def _loaded(name: str) -> _Loaded:
    loaded = _LOADED.get(name)
    if loaded is not None:
        return loaded
    if getattr(_NO_LOAD, "on", False):
        raise NotLoaded(name)
    # the lock makes the slow first load run once even when two threads need it at once
    with _LOAD_LOCK:
        if name not in _LOADED:
            _LOADED[name] = _load_unlocked(name)
        return _LOADED[name]


class loaded_only:  # noqa: N801 (used as a function: ``with tokens.loaded_only():``)
    """Within the block, needing an encoding that is not loaded yet raises `NotLoaded` instead
    of loading it: the event loop uses this to plan inline only what cannot block it. A class
    rather than a ``contextlib.contextmanager`` generator: entered on every inline plan."""

    __slots__ = ("_previous",)

    def __enter__(self) -> None:
        self._previous = getattr(_NO_LOAD, "on", False)
        _NO_LOAD.on = True

    def __exit__(self, *exc: object) -> None:
        _NO_LOAD.on = self._previous


def get_encoding(name: str) -> tiktoken.Encoding:
    """The shipped `o200k_base` or `cl100k_base` encoding, loaded once, safe from any thread."""
    return _loaded(name).encoding


# ---------------------------------------------------------------------------------------------
# Model -> encoding, plain text

_EXACT: dict[str, str] = {
    **dict.fromkeys(
        ("o1", "o3", "o4-mini", "gpt-5", "gpt-4.1", "gpt-4o", "gpt-4.5", "chatgpt-4o"), O200K),
    **dict.fromkeys(
        ("gpt-4", "gpt-3.5-turbo", "gpt-3.5", "gpt-35-turbo", "davinci-002", "babbage-002"), CL100K),
}
# tiktoken's prefix table (model.py), in its order; gpt-oss uses o200k_harmony, which only adds
# special tokens, so o200k_base counts ordinary text the same.
_PREFIXES: list[tuple[str, str]] = [
    ("o1-", O200K), ("o3-", O200K), ("o4-mini-", O200K), ("gpt-5", O200K), ("gpt-4.5-", O200K),
    ("gpt-4.1-", O200K), ("chatgpt-4o-", O200K), ("gpt-4o-", O200K), ("gpt-4-", CL100K),
    ("gpt-3.5-turbo-", CL100K), ("gpt-35-turbo-", CL100K), ("text-embedding-", CL100K),
    ("gpt-oss-", O200K),
]


#: encoding_for_model's answers by model name (a proxy sees a few names; asked per stream and checkpoint)
_ENCODING_OF: dict[str, str] = {}


def encoding_for_model(model: str) -> str:
    """tiktoken's encoding name for an OpenAI model (provider prefix and `ft:` stripped).

    Unknown or non-OpenAI models (claude-*, gemini-*) get `o200k_base`: an approximation for the
    reservation only, since settlement uses the provider's usage.
    """
    name = _ENCODING_OF.get(model)
    if name is None:
        if len(_ENCODING_OF) >= 1024:  # bounded: names come from clients
            _ENCODING_OF.clear()
        name = _ENCODING_OF[model] = _encoding_for(model)
    return name


def _encoding_for(model: str) -> str:
    name = bare_model(model)
    if name in _EXACT:
        return _EXACT[name]
    for prefix, encoding in _PREFIXES:
        if name.startswith(prefix):
            return encoding
    return O200K


def _n(enc: tiktoken.Encoding, text: str) -> int:
    # user text containing "<|endoftext|>" is counted as text, never raises: ``encode_ordinary`` is
    # tiktoken's ``encode(text, disallowed_special=())`` without its special-token checks
    return len(enc.encode_ordinary(text))


class _Counter:
    """Counts the tokens of one piece of text for the prompt estimates: exactly with a loaded
    tiktoken encoding (:class:`_Exact`), or bounded from above by its UTF-8 length
    (:class:`_Bytes`). ``name`` is the encoding's name either way (the tool constants depend on it)."""

    name: str

    def count(self, text: str) -> int:  # pragma: no cover - interface
        raise NotImplementedError


#: exact counts of the prompt texts seen, per encoding name (:class:`_Exact`): a client sends the
#: same system prompt, tool list and conversation so far on every call, so each text is counted
#: once. Keyed by the text itself (a hit is that very text: the count stays exact); emptied when
#: it holds more than ``_MEMO_CHARS`` characters or ``_MEMO_ENTRIES`` texts.
_MEMO: dict[str, dict[str, int]] = {}
_MEMO_CHARS = 4_000_000
_MEMO_ENTRIES = 8192
_memo_chars = 0


class _Exact(_Counter):
    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.name = encoding.name
        self._encoding = encoding
        memo = _MEMO.get(self.name)
        if memo is None:
            memo = _MEMO[self.name] = {}
        self._memo = memo

    def count(self, text: str) -> int:
        memo = self._memo
        n = memo.get(text)
        if n is None:
            n = _n(self._encoding, text)
            global _memo_chars
            if _memo_chars + len(text) > _MEMO_CHARS or len(memo) >= _MEMO_ENTRIES:
                for m in _MEMO.values():  # (threads may race here: the bound is approximate, each count exact)
                    m.clear()
                _memo_chars = 0
            if len(text) <= _MEMO_CHARS:
                memo[text] = n
                _memo_chars += len(text)
        return n


class _Bytes(_Counter):
    """Every token of a byte-level BPE encodes at least one byte of the text's UTF-8 (tiktoken
    encodes special-token text as ordinary text here, ``disallowed_special=()``), so the byte
    length is never below the token count, and needs no encoding loaded."""

    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def count(text: str) -> int:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


#: one byte-bound counter per encoding name (it holds only the name)
_BYTES: dict[str, _Bytes] = {}


def _counter(model: str, exact: bool) -> _Counter:
    name = encoding_for_model(model)
    if exact:
        return _Exact(get_encoding(name))
    counter = _BYTES.get(name)
    if counter is None:
        counter = _BYTES[name] = _Bytes(name)
    return counter


def is_loaded(name: str) -> bool:
    """Whether the encoding ``name`` is loaded (then an exact count costs no load)."""
    return name in _LOADED


def loaded_for(model: str) -> bool:
    """Whether the encoding of ``model`` is loaded."""
    return encoding_for_model(model) in _LOADED


_PRELOADING: set[str] = set()


def preload(name: str) -> None:
    """Start loading ``name`` in a daemon thread (once), so that a later exact count finds it
    loaded; the caller goes on at once."""
    if name in _LOADED or name in _PRELOADING:
        return
    _load_in_background(name, _PRELOADING, _loaded, "load")


def _load_in_background(name: str, loading: set[str], load: Callable[[str], object], label: str) -> None:
    """Run ``load(name)`` in a daemon thread, ``name`` marked in ``loading`` meanwhile; a failure
    unmarks it (the caller that needs it loads it again and sees the error)."""
    loading.add(name)

    def run() -> None:
        try:
            load(name)
        except Exception:
            loading.discard(name)

    threading.Thread(target=run, name=f"pouch-{label}-{name}", daemon=True).start()


# ---------------------------------------------------------------------------------------------
# Stream counting without tiktoken's table (issue 16 §4)

_COMPACT: dict[str, CompactBPE] = {}
_COMPACT_LOCK = threading.Lock()
_COMPACT_LOADING: set[str] = set()


def _compact(name: str) -> CompactBPE:
    """The compact exact table of ``name`` (:mod:`pouch_addon.compact_bpe`), built once from the
    shipped file (0.2-0.5 s for o200k_base); ``loaded_only`` applies as to tiktoken's."""
    table = _COMPACT.get(name)
    if table is not None:
        return table
    if name not in SHIPPED_SHA256:
        raise ValueError(f"encoding {name!r} is not shipped with pouch (have {sorted(SHIPPED_SHA256)})")
    if getattr(_NO_LOAD, "on", False):
        raise NotLoaded(name)
    with _COMPACT_LOCK:
        if name not in _COMPACT:
            _COMPACT[name] = _build_compact(name)
            trim_heap()
        return _COMPACT[name]


def _build_compact(name: str) -> CompactBPE:
    """The compact table from the shipped file read line by line (never the whole file at once:
    less peak memory), its SHA-256 checked at the end."""
    resource = _shipped_file(name)
    digest = hashlib.sha256()

    def lines(f: Any) -> Iterator[bytes]:
        for line in f:
            digest.update(line)
            yield line

    try:
        with resource.open("rb") as f:
            table = CompactBPE.from_tiktoken_lines(name, lines(f))
            digest.update(f.read())  # (nothing, unless the build stopped early)
    except OSError as exc:
        raise EncodingFileError(f"cannot read shipped encoding file {resource}: {exc}") from exc
    except ValueError as exc:  # a line that is not "token rank", or ranks out of order
        raise EncodingFileError(f"shipped encoding file {resource} is corrupt: {exc}") from exc
    _check_digest(name, resource, digest.hexdigest())
    return table


class _TiktokenStream:
    """A loaded tiktoken encoding, behind the interface ``StreamTokenCounter`` uses (that of
    :class:`CompactBPE`): ``count``, ``token_lengths``, ``pieces``."""

    __slots__ = ("_encoding", "pieces")

    def __init__(self, loaded: _Loaded) -> None:
        self._encoding = loaded.encoding
        self.pieces = loaded.pieces

    def count(self, text: str) -> int:
        return _n(self._encoding, text)

    def token_lengths(self, text: str) -> list[int]:
        token_bytes = self._encoding.decode_single_token_bytes
        return [len(token_bytes(t)) for t in self._encoding.encode(text, disallowed_special=())]


def _stream_counter(name: str) -> _TiktokenStream | CompactBPE:
    """What a stream is counted with: tiktoken's encoding when it is loaded anyway (faster), else
    the compact table (the same counts; loaded here if need be)."""
    loaded = _LOADED.get(name)
    return _TiktokenStream(loaded) if loaded is not None else _compact(name)


def stream_ready(model: str) -> bool:
    """Whether a stream of ``model`` can be counted exactly without loading anything."""
    name = encoding_for_model(model)
    return name in _LOADED or name in _COMPACT


def preload_stream(model: str) -> None:
    """Start building the compact table of ``model``'s encoding in a daemon thread (once), so that
    a stream nearing its cap finds it ready; the caller goes on at once."""
    name = encoding_for_model(model)
    if name in _LOADED or name in _COMPACT or name in _COMPACT_LOADING:
        return
    _load_in_background(name, _COMPACT_LOADING, _compact, "compact")


def count_text(text: str, model: str) -> int:
    """Tokens of `text` alone (no message framing) in the model's encoding."""
    if not isinstance(text, str):
        raise ValueError(f"count_text needs a string, got {type(text).__name__}")
    return _n(get_encoding(encoding_for_model(model)), text)


# ---------------------------------------------------------------------------------------------
# Prompt estimates (cookbook formula + tools + media)

REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>


@dataclass(frozen=True)
class _ToolConstants:
    func_init: int
    prop_init: int = 3
    prop_key: int = 3
    enum_init: int = -3
    enum_item: int = 3
    func_end: int = 12


# Cookbook section 7: gpt-4o/gpt-4o-mini constants for o200k models, gpt-4/3.5 ones for cl100k.
_TOOL_CONSTANTS = {O200K: _ToolConstants(func_init=7), CL100K: _ToolConstants(func_init=10)}

# Audio: ~10 tokens/s of input audio is the commonly quoted rate; 20/s (the output rate seen in
# responses) bounds it. Without a WAV header, assume the lowest common bitrate (8 kbit/s).
AUDIO_TOKENS_PER_SECOND = 20
_MIN_AUDIO_BYTES_PER_SECOND = 1000
# Inline files (PDFs: extracted text plus one image per page): 1 token per decoded byte. Text
# averages several bytes per token and page images ~1k tokens per page, so this bounds typical
# files; callers should clamp any estimate to the model's max input tokens.
FILE_TOKENS_PER_BYTE = 1
# A file sent by id or URL has no size we can see: assume a typical full context window.
UNKNOWN_FILE_TOKENS = 128_000


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _require_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _require_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {type(value).__name__}")
    return value


#: _message_overheads' answers by model name (asked per message; bounded as _ENCODING_OF)
_OVERHEADS: dict[str, tuple[int, int]] = {}


def _message_overheads(model: str) -> tuple[int, int]:
    """(tokens_per_message, tokens_per_name): 3/1 everywhere except the old gpt-3.5-turbo-0301."""
    found = _OVERHEADS.get(model)
    if found is None:
        if len(_OVERHEADS) >= 1024:  # bounded: names come from clients
            _OVERHEADS.clear()
        found = _OVERHEADS[model] = (4, -1) if bare_model(model) == "gpt-3.5-turbo-0301" else (3, 1)
    return found


def _b64_payload(data: str) -> str:
    return data.partition(",")[2] if data.startswith("data:") else data


def _b64_decoded_size(payload: str) -> int:
    """Bytes that base64 text decodes to, without decoding it."""
    return len(payload.rstrip("=")) * 3 // 4


def audio_tokens_bound(data_b64: str, audio_format: str | None) -> int:
    """Upper bound on the audio tokens of base64 audio, from its duration (WAV header if any)."""
    payload = _b64_payload(data_b64)
    n_bytes = _b64_decoded_size(payload)
    byte_rate = _MIN_AUDIO_BYTES_PER_SECOND
    if audio_format in (None, "wav"):
        try:
            head = base64.b64decode(payload[:64])
        except (binascii.Error, ValueError):
            head = b""
        if head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt ":
            rate = struct.unpack("<I", head[28:32])[0]
            byte_rate = rate if rate > 0 else byte_rate
    return math.ceil(n_bytes / byte_rate * AUDIO_TOKENS_PER_SECOND)


def _file_tokens(enc: _Counter, spec: dict[str, Any], where: str) -> int:
    filename = spec.get("filename")
    n = enc.count(filename) if isinstance(filename, str) else 0
    data = spec.get("file_data")
    if data is None:
        return n + UNKNOWN_FILE_TOKENS
    payload = _b64_payload(_require_str(data, f"{where}.file_data"))
    return n + _b64_decoded_size(payload) * FILE_TOKENS_PER_BYTE


def _image_part_tokens(model: str, url: Any, detail: Any, where: str) -> int:
    size = image_size_from_data_url(_require_str(url, where)) if url is not None else None
    width, height = size if size else (None, None)
    return image_tokens(model, width, height, detail if isinstance(detail, str) else "auto")


def _part_tokens(enc: _Counter, model: str, part: Any, where: str) -> int:
    """One content part of chat (`text`, `image_url`, `input_audio`, `file`) or Responses
    (`input_text`, `output_text`, `input_image`, `input_file`, `refusal`) content."""
    part = _require_dict(part, where)
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text"):
        return enc.count(_require_str(part.get("text"), f"{where}.text"))
    if kind == "refusal":
        return enc.count(_require_str(part.get("refusal"), f"{where}.refusal"))
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, str):
            return _image_part_tokens(model, image, "auto", f"{where}.image_url")
        image = _require_dict(image, f"{where}.image_url")
        return _image_part_tokens(model, image.get("url"), image.get("detail"), f"{where}.image_url.url")
    if kind == "input_image":
        return _image_part_tokens(model, part.get("image_url"), part.get("detail"), f"{where}.image_url")
    if kind == "input_audio":
        audio = _require_dict(part.get("input_audio"), f"{where}.input_audio")
        data = _require_str(audio.get("data"), f"{where}.input_audio.data")
        fmt = audio.get("format")
        return audio_tokens_bound(data, fmt if isinstance(fmt, str) else None)
    if kind == "file":
        return _file_tokens(enc, _require_dict(part.get("file"), f"{where}.file"), f"{where}.file")
    if kind == "input_file":
        return _file_tokens(enc, part, where)
    return enc.count(_json(part))  # unknown part type: its JSON text


def _content_tokens(enc: _Counter, model: str, content: Any, where: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return enc.count(content)
    if not isinstance(content, list):
        raise ValueError(f"{where} must be a string or a list of parts, got {type(content).__name__}")
    return sum(_part_tokens(enc, model, part, f"{where}[{i}]") for i, part in enumerate(content))


def _chat_message_tokens(enc: _Counter, model: str, message: Any, where: str) -> int:
    """Cookbook: per-message overhead + every field's tokens (+1 for `name`). Non-string fields
    (`tool_calls`, `function_call`, audio references) are counted as their JSON text."""
    message = _require_dict(message, where)
    per_message, per_name = _message_overheads(model)
    n = per_message
    for key, value in message.items():
        if key == "content":
            n += _content_tokens(enc, model, value, f"{where}.content")
        elif isinstance(value, str):
            n += enc.count(value)
        elif value is not None:
            n += enc.count(_json(value))
        if key == "name":
            n += per_name
    return n


def _function_of(tool: Any, where: str) -> dict[str, Any] | None:
    """The function definition in a chat tool, a legacy `functions` entry or a Responses tool;
    None for built-in tools (web_search, file_search, custom, ...)."""
    tool = _require_dict(tool, where)
    if isinstance(tool.get("function"), dict):
        return tool["function"]
    if tool.get("type", "function") != "function":
        return None
    _require_str(tool.get("name"), f"{where}.name")
    return tool


def _tools_tokens(enc: _Counter, tools: Any, where: str) -> int:
    """Cookbook `num_tokens_for_tools`. Schema parts it ignores (nested objects, `items`,
    `anyOf`, `$defs`) are added as their JSON text so big schemas are not under-counted."""
    if tools is None:
        return 0
    if not isinstance(tools, list):
        raise ValueError(f"{where} must be a list, got {type(tools).__name__}")
    if not tools:
        return 0
    c = _TOOL_CONSTANTS[enc.name]
    n = c.func_end
    for i, tool in enumerate(tools):
        n += c.func_init
        function = _function_of(tool, f"{where}[{i}]")
        if function is None:
            n += enc.count(_json(tool))
            continue
        name = _require_str(function.get("name"), f"{where}[{i}] name")
        description = function.get("description") or ""
        description = _require_str(description, f"{where}[{i}] description").removesuffix(".")
        n += enc.count(f"{name}:{description}")
        parameters = _require_dict(function.get("parameters") or {}, f"{where}[{i}] parameters")
        properties = _require_dict(parameters.get("properties") or {}, f"{where}[{i}] properties")
        extra = {k: v for k, v in parameters.items()
                 if k not in ("type", "properties", "required", "additionalProperties")}
        if extra:
            n += enc.count(_json(extra))
        if properties:
            n += c.prop_init
        for key, schema in properties.items():
            schema = _require_dict(schema, f"{where}[{i}] property {key!r}")
            n += c.prop_key
            if "enum" in schema:
                enum = schema["enum"] if isinstance(schema["enum"], list) else [schema["enum"]]
                n += c.enum_init
                for item in enum:
                    n += c.enum_item + enc.count(item if isinstance(item, str) else _json(item))
            p_type = schema.get("type", "")
            p_type = p_type if isinstance(p_type, str) else _json(p_type)
            p_desc = schema.get("description") or ""
            p_desc = p_desc.removesuffix(".") if isinstance(p_desc, str) else _json(p_desc)
            n += enc.count(f"{key}:{p_type}:{p_desc}")
            rest = {k: v for k, v in schema.items() if k not in ("type", "description", "enum")}
            if rest:
                n += enc.count(_json(rest))
    return n


def _schema_format_tokens(enc: _Counter, fmt: Any) -> int:
    """A structured-output JSON schema is shown to the model; count its JSON text."""
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return enc.count(_json(fmt.get("json_schema", fmt)))
    return 0


def estimate_chat_prompt(body: dict[str, Any], model: str, *, exact: bool = True) -> int:
    """Estimated prompt tokens of a `/v1/chat/completions` request body."""
    body = _require_dict(body, "chat completions body")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("chat completions body: 'messages' must be a list")
    enc = _counter(model, exact)
    n = REPLY_PRIMING
    for i, message in enumerate(messages):
        n += _chat_message_tokens(enc, model, message, f"messages[{i}]")
    n += _tools_tokens(enc, body.get("tools"), "tools")
    n += _tools_tokens(enc, body.get("functions"), "functions")
    return n + _schema_format_tokens(enc, body.get("response_format"))


def _responses_item_tokens(enc: _Counter, model: str, item: Any, where: str) -> int:
    item = _require_dict(item, where)
    per_message = _message_overheads(model)[0]
    kind = item.get("type", "message")
    if kind == "message":
        role = _require_str(item.get("role"), f"{where}.role")
        content = _content_tokens(enc, model, item.get("content"), f"{where}.content")
        return per_message + enc.count(role) + content
    if kind == "function_call":
        name = _require_str(item.get("name"), f"{where}.name")
        arguments = _require_str(item.get("arguments"), f"{where}.arguments")
        return per_message + enc.count(name) + enc.count(arguments)
    if kind == "function_call_output":
        output = item.get("output")
        return per_message + _content_tokens(enc, model, output, f"{where}.output")
    # reasoning, built-in tool calls, item_reference, ...: their JSON text, minus bookkeeping
    rest = {k: v for k, v in item.items() if k not in ("type", "id", "status")}
    return per_message + enc.count(_json(rest))


def estimate_responses_input(body: dict[str, Any], model: str, *, exact: bool = True) -> int:
    """Estimated input tokens of a `/v1/responses` body, with chat's per-message overheads."""
    body = _require_dict(body, "responses body")
    enc = _counter(model, exact)
    per_message = _message_overheads(model)[0]
    n = REPLY_PRIMING
    instructions = body.get("instructions")
    if instructions is not None:
        n += per_message + enc.count("system") + enc.count(_require_str(instructions, "instructions"))
    inputs = body.get("input")
    if isinstance(inputs, str):
        n += per_message + enc.count("user") + enc.count(inputs)
    elif isinstance(inputs, list):
        n += sum(_responses_item_tokens(enc, model, item, f"input[{i}]") for i, item in enumerate(inputs))
    elif inputs is not None:
        raise ValueError(f"responses body: 'input' must be a string or a list, got {type(inputs).__name__}")
    n += _tools_tokens(enc, body.get("tools"), "tools")
    text = body.get("text")
    return n + (_schema_format_tokens(enc, text.get("format")) if isinstance(text, dict) else 0)


def _hidden_parts(content: Any, model: str, found: set[str]) -> None:
    """Content parts whose tokens the body does not determine (see ``hidden_inputs``)."""
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("file", "input_file"):
            found.add("file")
        elif kind in ("image_url", "input_image"):
            image = part.get("image_url")
            detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
            if not has_rule(model) or detail not in KNOWN_DETAILS:
                found.add("image")


def hidden_inputs(body: dict[str, Any], api: str, model: str) -> list[str]:
    """What a request's input holds that its body does not show, so no offline count bounds it.

    - Responses ``prompt`` (a stored prompt template: its instructions, messages and tools live
      on the server), ``previous_response_id`` and ``conversation`` (earlier turns), and
      ``item_reference`` input items (stored items by id);
    - files in any form (``input_file`` / chat ``file`` by id, URL or inline data: a PDF is its
      extracted text plus one image per page, and a compressed PDF's text can be far larger
      than its bytes);
    - images on a model no published vision rule covers, or with a ``detail`` the rules do not
      price (images by URL or file id are otherwise bounded: the rule's most tiles/patches).

    Empty when the body shows everything. The caller bounds such input by the context window."""
    found: set[str] = set()
    if api == "responses":
        for key in ("prompt", "previous_response_id", "conversation"):
            if body.get(key) is not None:
                found.add(key)
        inputs = body.get("input")
        for item in inputs if isinstance(inputs, list) else ():
            if not isinstance(item, dict):
                continue
            if item.get("type") == "item_reference":
                found.add("item_reference")
            _hidden_parts(item.get("content"), model, found)
            _hidden_parts(item.get("output"), model, found)  # function_call_output parts
    elif api == "chat":
        for message in body.get("messages") if isinstance(body.get("messages"), list) else ():
            if isinstance(message, dict):
                _hidden_parts(message.get("content"), model, found)
    return sorted(found)


def _token_inputs(enc: _Counter, value: Any, where: str) -> int:
    """A string, a list of strings, a token array, or a list of token arrays."""
    def is_tokens(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if isinstance(value, str):
        return enc.count(value)
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return sum(enc.count(v) for v in value)
        if is_tokens(value):
            return len(value)
        if all(is_tokens(v) for v in value):
            return sum(len(v) for v in value)
    raise ValueError(f"{where} must be a string, a list of strings, a token array or a list of token arrays")


def estimate_completion_prompt(body: dict[str, Any], model: str, *, exact: bool = True) -> int:
    """Prompt tokens of a legacy `/v1/completions` body (`prompt` plus `suffix`)."""
    body = _require_dict(body, "completions body")
    enc = _counter(model, exact)
    # a missing prompt means the API's default "<|endoftext|>", one special token
    n = _token_inputs(enc, body["prompt"], "prompt") if "prompt" in body else 1
    suffix = body.get("suffix")
    return n + (enc.count(_require_str(suffix, "suffix")) if suffix is not None else 0)


def estimate_embedding_input(body: dict[str, Any], model: str, *, exact: bool = True) -> int:
    """Input tokens of a `/v1/embeddings` body."""
    body = _require_dict(body, "embeddings body")
    if "input" not in body:
        raise ValueError("embeddings body: 'input' is required")
    return _token_inputs(_counter(model, exact), body["input"], "input")


# ---------------------------------------------------------------------------------------------
# Streaming

def _last_piece_start(text: str) -> int:
    """The last index ``i > 0`` where a space follows a letter, digit or ASCII symbol; 0 if none.

    In both shipped pre-tokenizers (o200k_base, cl100k_base) no piece holds such a character
    followed by a space: a space is only ever a piece's first character or part of a whitespace
    run. So a piece starts at ``i`` whatever text follows, the pieces before ``i`` end at ``i - 1``
    without looking past it, and ``count(text) == count(text[:i]) + count(text[i:])``. (Python's
    ``isspace`` and the regex's whitespace class disagree on rare characters; letters, digits and
    ASCII symbols are non-space in both.)"""
    i = text.rfind(" ", 1)
    while i > 0:
        prev = text[i - 1]
        if "!" <= prev <= "~" or prev.isalnum():
            return i
        i = text.rfind(" ", 1, i)
    return 0


class StreamTokenCounter:
    """Running token count of streamed text, equal to `count_text(everything fed so far)`.

    tiktoken splits text with a regex into pieces and byte-pair-encodes each piece on its own,
    so the count is a sum over pieces. Appending text can only change the last pieces (a word
    growing, "we'l" + "l" becoming "we'll", trailing spaces regrouping). Two ways to drop what
    no later text can change, so each feed re-encodes a short tail only:

    - prose: everything before the last space that follows a letter, digit or ASCII symbol is
      counted in one tiktoken call (`_last_piece_start`: a piece always starts at such a space,
      and nothing before it depends on what follows). This needs no Python-side regex, which
      costs several times tiktoken's own encoding;
    - a tail still longer than `_SHORT_TAIL` (code, CJK, long runs) is split with the
      pre-tokenizer's regex, and every piece but the last `_UNSTABLE_PIECES` is counted.

    A single huge piece (a degenerate run of spaces or letters) would make that tail grow
    without bound; past `_LONG_TAIL` characters its byte-pair tokens ending more than
    `_KEEP_BYTES` (twice the longest token) before the end are settled too. That relies on BPE
    merges being local, which holds for both encodings in our tests but is not a theorem.

    The counting itself is tiktoken's when its encoding is loaded anyway, else the compact table's
    (:mod:`pouch_addon.compact_bpe`, the same counts in a tenth of the memory). On the compact
    table a text with a code point newer than Python's Unicode database turns the counter into
    an upper bound (``bounded``): that text and all after it count as their UTF-8 bytes.
    """

    _UNSTABLE_PIECES = 3
    _SHORT_TAIL = 64
    _LONG_TAIL = 512
    _KEEP_BYTES = 256

    def __init__(self, model: str) -> None:
        counter = _stream_counter(encoding_for_model(model))
        self._n = counter.count
        self._token_lengths = counter.token_lengths
        self._pieces = counter.pieces
        # the compact table is exact but for code points newer than Python's Unicode database
        # (compact_bpe.suspect); from the first such text on, the count bounds from above
        self._suspect = suspect if isinstance(counter, CompactBPE) else None
        self.bounded = False
        self._settled = 0  # tokens of text that no later text can change
        self._tail = ""
        self._tail_tokens = 0

    @property
    def count(self) -> int:
        return self._settled + self._tail_tokens

    def feed(self, text: str) -> int:
        """Add streamed text; returns the running total."""
        if not isinstance(text, str):
            raise ValueError(f"StreamTokenCounter.feed needs a string, got {type(text).__name__}")
        if not text:
            return self.count
        tail = self._tail + text
        if self.bounded or (self._suspect is not None and self._suspect(tail)):
            # the tail starts where the exact count's pieces do: every later byte bounds a token
            self.bounded = True
            self._settled += len(tail.encode("utf-8", "surrogatepass"))
            self._tail, self._tail_tokens = "", 0
            return self.count
        cut = _last_piece_start(tail)
        if cut:
            self._settled += self._n(tail[:cut])
            tail = tail[cut:]
        if len(tail) > self._SHORT_TAIL:
            tail = self._settle_pieces(tail)
        self._tail = tail
        self._tail_tokens = self._n(tail)
        return self.count

    def _settle_pieces(self, tail: str) -> str:
        """Count all but the last pieces of ``tail`` by the regex split; return what is left."""
        pieces = [m.group() for m in self._pieces.finditer(tail)]
        if len(pieces) > self._UNSTABLE_PIECES:
            stable = pieces[: -self._UNSTABLE_PIECES]
            # count piece by piece: the joined prefix could regroup (" " + " " alone is "  ")
            self._settled += sum(map(self._n, stable))
            tail = tail[sum(len(piece) for piece in stable):]
        if len(tail) > self._LONG_TAIL:
            tail = self._settle_long_tail(tail)
        return tail

    def _settle_long_tail(self, tail: str) -> str:
        """Settle the tokens of a long tail that end well before its end; return what is left."""
        # a lone surrogate (JSON's "\ud83d" decodes to one) takes 3 bytes with surrogatepass, as
        # the U+FFFD tiktoken encodes in its place does, so the token offsets still line up
        raw = tail.encode("utf-8", "surrogatepass")
        limit = len(raw) - self._KEEP_BYTES
        cut, settled, offset = 0, 0, 0
        for i, length in enumerate(self._token_lengths(tail)):
            offset += length
            if offset > limit:
                break
            if offset < len(raw) and raw[offset] & 0xC0 != 0x80:  # a character boundary
                cut, settled = offset, i + 1
        if cut == 0:
            return tail
        self._settled += settled
        return raw[cut:].decode("utf-8", "surrogatepass")
