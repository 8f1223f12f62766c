"""Google Gemini (``generateContent`` / ``streamGenerateContent``): what pouch bills, bounds, meters.

Pure: request paths and bodies, stream chunks and usage objects in; plans, meters and error
bodies out.

**Model** from the URL path: ``/v1beta/models/{model}:generateContent`` (also ``v1``,
``v1alpha``), ``:streamGenerateContent`` with ``?alt=sse`` (SSE) or without (a streamed JSON array).
``:countTokens`` is free; batches, cached contents (billed per hour of storage), embeddings,
tuned models and every other method are refused or unknown.

**Output bound.** Per candidate: ``generationConfig.maxOutputTokens`` (injected when absent,
as for OpenAI: the smaller of the model's max output and what the budget can pay) plus the
thinking. Google's documentation does not say that ``maxOutputTokens`` bounds thinking, and
``thoughtsTokenCount`` is reported beside ``candidatesTokenCount``, so pouch reserves the
thinking on top: ``thinkingConfig.thinkingBudget`` when it is set (0: none), else (absent,
-1 = dynamic, or a ``thinkingLevel``) the model's max output tokens. Times ``candidateCount``.
Google's JSON parser takes every field in camelCase or snake_case (google-genai sends nested
config dicts as written, e.g. ``thinking_config``), so pouch reads both and refuses a request that
sets one field in both spellings (it cannot know which one Google would apply); an injected cap
uses the spelling of the config object around it.

**Input bound.** As for Anthropic (``_bounds``): the UTF-8 bytes of ``contents``,
``systemInstruction``, ``tools`` and ``toolConfig``; inline or referenced media, and a
``cachedContent``, are bounded by the context window. Google-run tools (Search and Maps
grounding, code execution, URL context, file search) are refused: their per-query fees and
turns cannot be bounded from the request.

**Usage.** ``usageMetadata``: ``promptTokenCount`` includes the cached tokens, thinking is billed
beside the candidates (``Usage.from_gemini``). Every streamed chunk carries running totals: the
last one wins, and it is final when the stream ends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from ..plan import DraftPlan, PlanError, PlanSettings, _unbounded
from ..pricing import PriceTable, UnknownModel, Usage
from . import _bounds
from .streams import ProviderStreamMeter

NAME = "gemini"
#: whether a streamed response may be a JSON array instead of SSE (``streams.JSONArrayFramer``)
JSON_ARRAY_STREAMS = True
HOSTS = ("generativelanguage.googleapis.com",)
_MODEL_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):([A-Za-z]+)$")
BILLED_METHODS = ("generateContent", "streamGenerateContent")
FREE_METHODS = ("countTokens",)
#: tool keys of functions the client runs
CLIENT_TOOL_KEYS = frozenset({"functionDeclarations", "function_declarations", "computerUse", "computer_use"})


def split_path(path: str) -> tuple[str, str] | None:
    """``(model, method)`` of a ``/v1beta/models/{model}:{method}`` path, else None."""
    m = _MODEL_PATH.match(unquote(path.split("?", 1)[0]).rstrip("/"))
    return (m.group(2), m.group(3)) if m else None


def classify(method: str, path: str, *, has_body: bool = False) -> str:
    """``billed`` / ``free`` / ``refused`` / ``unknown`` for a request to the Gemini API host."""
    method = method.upper()
    parts = split_path(path)
    bare = path.split("?", 1)[0].rstrip("/")
    if method == "POST" and parts is not None:
        if parts[1] in BILLED_METHODS:
            return "billed"
        if parts[1] in FREE_METHODS:
            return "free"
        return "refused"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "unknown" if has_body else "free"  # a read with a body is not known to be free
    if method in ("POST", "DELETE") and re.match(r"^(/upload)?/(v1|v1beta|v1alpha)/files(/|$)", bare):
        return "free"  # uploading or deleting a file is not billed; using one is bounded
    if method == "POST" and re.search(r"/(cachedContents|batches|tunedModels)(/|$|:)", bare):
        return "refused"
    return "unknown"


def refusal(method: str, path: str) -> str:
    parts = split_path(path)
    what = f"`{parts[1]}`" if parts else "this endpoint"
    return (f"pouch: {what} is billed in a way pouch cannot reserve for before the request leaves "
            "(batches and cached contents are billed later, per job or per hour of storage); only "
            "generateContent and streamGenerateContent are metered; nothing was sent")


def snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


def field_of(obj: Mapping[str, Any], camel: str) -> tuple[str, Any]:
    """``(spelling, value)`` of a field set in camelCase or snake_case (``(camel, None)`` when
    absent); a field set in both spellings is refused."""
    alt = snake(camel)
    if alt != camel and camel in obj and alt in obj:
        raise PlanError(f"pouch: `{camel}` and `{alt}` are the same field and both are set; pouch cannot "
                        "know which one Google would apply; nothing was sent")
    if alt in obj and camel not in obj:
        return alt, obj[alt]
    return camel, obj.get(camel)


def _int(cfg: Mapping[str, Any], camel: str, minimum: int) -> int | None:
    name, value = field_of(cfg, camel)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"pouch: `generationConfig.{name}` must be an integer >= {minimum}, not {value!r}")
    return value


def _tools_ok(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise PlanError("pouch: `tools` must be a list")
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise PlanError("pouch: every entry of `tools` must be an object")
        for key in tool:
            if key not in CLIENT_TOOL_KEYS:
                raise _unbounded(f"the `{key}` tool runs on Google's side (per-query fees and extra turns pouch "
                                 "cannot bound from the request)")


def draft(method: str, path: str, body: dict[str, Any], *, table: PriceTable,
          settings: PlanSettings = PlanSettings()) -> DraftPlan:
    """Read, validate and bound a generateContent request (raises :class:`PlanError`)."""
    parts = split_path(path)
    if parts is None:
        raise PlanError(f"pouch: not a Gemini model path: {path!r}")
    model, method_name = parts
    try:
        price = table.resolve_bound(model)
    except UnknownModel as exc:
        raise PlanError(str(exc).strip("\"'"), code="pouch_unknown_model") from None
    if price.provider != NAME:
        raise PlanError(f"pouch: {model} is not a Gemini model in the price table; nothing was sent",
                        code="pouch_unknown_model")
    _tools_ok(body.get("tools"))
    cfg_name, cfg = field_of(body, "generationConfig")
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise PlanError("pouch: `generationConfig` must be an object")
    if not isinstance(body.get("contents"), (list, dict)):
        raise PlanError("pouch: `contents` must be a list")
    choices = _int(cfg, "candidateCount", 1) or 1
    cap = _int(cfg, "maxOutputTokens", 1)
    _, thinking_cfg = field_of(cfg, "thinkingConfig")
    if thinking_cfg is not None and not isinstance(thinking_cfg, Mapping):
        raise PlanError("pouch: `generationConfig.thinkingConfig` must be an object")
    budget = None
    if isinstance(thinking_cfg, Mapping):
        name, budget = field_of(thinking_cfg, "thinkingBudget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < -1):
            raise PlanError(f"pouch: `{name}` must be an integer >= -1, not {budget!r}")
    max_out = price.max_output_tokens
    if budget is not None and budget >= 0:
        thinking = budget
    elif max_out is not None:
        thinking = max_out
    else:
        raise _unbounded(f"{model}'s max output is unknown, so its thinking cannot be bounded; set "
                         "generationConfig.thinkingConfig.thinkingBudget")
    if cap is None and not settings.inject_max_tokens:
        if max_out is None:
            raise _unbounded(f"the request sets no maxOutputTokens and {model}'s max output is unknown")
        cap = max_out

    media = _bounds.Media()
    shown = {k: v for k, v in ((k, field_of(body, k)[1]) for k in ("contents", "systemInstruction", "tools", "toolConfig"))
             if v is not None}
    estimate = _bounds.utf8_len(_bounds.strip_media(shown, media)) + media.text_bytes
    hidden = list(media.hidden)
    if field_of(body, "cachedContent")[1] is not None:
        hidden.append("cached content")
    # an injected cap goes into the config object the client wrote, in its spelling
    snake_cfg = cfg_name == "generation_config" or any("_" in k for k in cfg)
    cap_field = f"{cfg_name}.{'max_output_tokens' if snake_cfg else 'maxOutputTokens'}"
    reserved, notes = _bounds.reserved_input(estimate, hidden, price, model)
    return DraftPlan(
        api="gemini", path=path.split("?", 1)[0], model=model, price=price,
        stream=method_name == "streamGenerateContent", input_tokens=reserved, reserved_input_tokens=reserved,
        choices=choices, tier=None, client_wants_usage=True, cap=cap,
        cap_field=cap_field, notes=notes, input_hidden=tuple(hidden),
        extra_output=thinking,
    )


# -- usage and responses -------------------------------------------------------------------------
def usage_from_body(body: Any) -> tuple[Usage | None, str | None, str | None]:
    """(usage, model, tier) of a non-streamed response (a streamed JSON array: its last usage)."""
    if isinstance(body, list):
        found: tuple[Usage | None, str | None, str | None] = (None, None, None)
        for element in body:
            if isinstance(element, Mapping):
                usage, model, tier = usage_from_body(element)
                found = (usage or found[0], model or found[1], None)
        return found
    if not isinstance(body, Mapping):
        return None, None, None
    meta = body.get("usageMetadata")
    usage = None
    if isinstance(meta, Mapping):
        try:
            usage = Usage.from_gemini(meta)
        except ValueError:
            usage = None
    model = body.get("modelVersion") if isinstance(body.get("modelVersion"), str) else None
    return usage, model, None


def tool_calls_from_body(api: str, body: Any) -> dict[str, int] | None:
    return None  # server-side tools are refused (see the module doc)


def usage_from_counts(*, input: int, cached: int = 0, cache_write: int = 0, cache_write_1h: int = 0,
                      output: int = 0, reasoning: int = 0, thoughts: int = 0) -> Usage:
    """``pouch cost``: counts as Gemini reports them (``input`` = promptTokenCount, cached included;
    ``output`` = candidatesTokenCount; ``thoughts`` = thoughtsTokenCount, billed beside it)."""
    if cache_write or cache_write_1h or reasoning:
        raise ValueError("Gemini reports no cache writes or reasoning: use --cached and --thoughts")
    return Usage.from_gemini({"promptTokenCount": input, "cachedContentTokenCount": cached,
                              "candidatesTokenCount": output, "thoughtsTokenCount": thoughts})


def output_texts(body: Any) -> list[str]:
    elements = body if isinstance(body, list) else [body]
    texts: list[str] = []
    for element in elements:
        for cand in (element.get("candidates") or []) if isinstance(element, Mapping) else []:
            content = cand.get("content") if isinstance(cand, Mapping) else None
            for part in (content.get("parts") or []) if isinstance(content, Mapping) else []:
                if isinstance(part, Mapping):
                    if isinstance(part.get("text"), str):
                        texts.append(part["text"])
                    if part.get("functionCall") is not None:
                        texts.append(json.dumps(part["functionCall"]))
    return texts


_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION", 403: "PERMISSION_DENIED",
           404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT", 421: "INVALID_ARGUMENT",
           426: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


def error_body(status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
    """pouch's own answer in Google's error shape (google-genai raises ClientError/ServerError)."""
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN"),
                      "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code,
                                   "domain": "pouch"}]}}


# -- streams -------------------------------------------------------------------------------------
#: the usageMetadata counts that grow chunk by chunk (holes of a templated chunk)
_RUNNING_COUNTS = ("candidatesTokenCount", "thoughtsTokenCount", "totalTokenCount")


class GeminiStreamMeter(ProviderStreamMeter):
    """Meters ``streamGenerateContent``: SSE (``alt=sse``) or a streamed JSON array.

    An SSE chunk of one candidate with one text part (no finish reason, no error) is learnt as a
    template (``providers/templates.py``; holes: the text and the running ``candidatesTokenCount``,
    ``thoughtsTokenCount``, ``totalTokenCount``) and the next ones of its shape are metered
    without the JSON scanner. The JSON-array form is framed by parsing (``JSONArrayFramer``), so
    it has no templated path."""

    template_tries = 6

    def _on_json(self, obj: dict[str, Any], event: str | None) -> bool:
        err = obj.get("error")
        if err is not None:
            self._record_error(err if err.__class__ is dict else {"message": str(err)})
            return True
        model = obj.get("modelVersion")
        if model.__class__ is str and model:
            self.model_reported = model
        for i, cand in enumerate(obj.get("candidates") or ()):
            if cand.__class__ is not dict:
                continue
            index = cand.get("index", i)
            content = cand.get("content")
            if content.__class__ is dict:
                for part in content.get("parts") or ():
                    if part.__class__ is dict:
                        self._count(index if index.__class__ is int else i, part.get("text"))
            if cand.get("finishReason"):
                self._finished = True
        meta = obj.get("usageMetadata")
        if meta.__class__ is dict:
            self._on_usage(meta)
        return True

    def _template_paths(self, obj: dict[str, Any], event: str | None) -> tuple[list[tuple], Any] | None:
        if obj.get("error") is not None:
            return None
        cands = obj.get("candidates")
        if cands.__class__ is not list or len(cands) != 1:
            return None
        cand = cands[0]
        if cand.__class__ is not dict or cand.get("finishReason"):
            return None
        content = cand.get("content")
        parts = content.get("parts") if content.__class__ is dict else None
        if parts.__class__ is not list or len(parts) != 1 or parts[0].__class__ is not dict \
                or parts[0].get("text").__class__ is not str:
            return None
        index = cand.get("index", 0)
        paths: list[tuple] = [("candidates", 0, "content", "parts", 0, "text")]
        meta = obj.get("usageMetadata")
        counts: tuple[str, ...] = ()
        if meta.__class__ is dict:
            counts = tuple(k for k in _RUNNING_COUNTS if meta.get(k).__class__ is int)
            paths += [("usageMetadata", k) for k in counts]
        elif meta is not None:
            return None
        model = obj.get("modelVersion")
        ikey = simple = None
        if meta is not None:  # what _on_usage reads besides the holes is fixed
            ikey = (meta.get("promptTokenCount"), meta.get("cachedContentTokenCount"),
                    meta.get("toolUsePromptTokenCount"))
            simple = all(k in counts or k not in meta for k in ("candidatesTokenCount", "thoughtsTokenCount"))
        return paths, (model if model.__class__ is str and model else None,
                       index if index.__class__ is int else 0, meta, counts, ikey, simple)

    def _template_learnt(self, tpl: Any) -> None:
        # which hole holds which count (the holes are in the order of the chunk's bytes)
        model, index, meta, counts, ikey, simple = tpl.info
        at = tuple((path[1], 2 * i + 1) for i, path in enumerate(tpl.paths) if path[0] == "usageMetadata")
        tpl.info = (model, index, meta, at, ikey, simple)

    def _apply_template(self, tpl: Any, text: str, holes: Any) -> None:
        # _on_json of the learnt chunk with these values: the model, the text, the running usage
        model, index, meta, counts, ikey, simple = tpl.info
        if model is not None:
            self.model_reported = model
        if text:
            texts = self._pending.get(index)
            if texts is None:
                self._pending[index] = [text]
            else:
                texts.append(text)
            self._pending_bytes += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if meta is not None:
            meta = meta.copy()
            for k, at in counts:
                meta[k] = int(holes[at])
            if simple and ikey == self._input_key:  # _on_usage, inline: the input key is unchanged
                self._last_meta = meta
                self._reported_output = meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0)
            else:
                self._on_usage(meta)

    _last_meta: dict[str, Any] | None = None
    _input_key: tuple[Any, ...] | None = None
    _finished = False

    def _on_usage(self, meta: dict[str, Any]) -> None:
        """A running total: the input part is re-read only when it changes (once per stream);
        the output so far (candidates + thoughts, the larger reading) is two integer reads."""
        self._last_meta = meta
        key = (meta.get("promptTokenCount"), meta.get("cachedContentTokenCount"), meta.get("toolUsePromptTokenCount"))
        if key != self._input_key:
            self._input_key = key
            try:
                self._set_input(Usage.from_gemini({"promptTokenCount": key[0] or 0, "cachedContentTokenCount": key[1],
                                                   "toolUsePromptTokenCount": key[2]}))
            except ValueError:
                self.parse_errors += 1
        out = meta.get("candidatesTokenCount", 0)
        thoughts = meta.get("thoughtsTokenCount", 0)
        if out.__class__ is int and thoughts.__class__ is int:
            self._reported_output = out + thoughts
        elif out is not None or thoughts is not None:
            self.parse_errors += 1

    def finish(self) -> list[bytes]:
        out = super().finish()
        if not self.cut:
            self.done = self._finished or self.done
            if self._last_meta is not None:  # the stream ended: the last running total is final
                try:
                    self._set_final(Usage.from_gemini(self._last_meta))
                except ValueError:
                    self.parse_errors += 1
        return out

    def _cut_event(self, code: str, message: str) -> bytes:
        self.cut_reason = code
        err = error_body(402, message, code)
        if self.json_array:
            return b",\r\n" + json.dumps(err).encode() + b"\r\n]"
        return b"data: " + json.dumps(err, separators=(",", ":")).encode() + b"\r\n\r\n"


class GeminiArrayMeter(GeminiStreamMeter):
    json_array = True


def new_meter(plan: Any, reservation: Decimal, *, sse: bool = True,
              content_encoding: str | None = None) -> GeminiStreamMeter:
    cls = GeminiStreamMeter if sse else GeminiArrayMeter
    return cls(plan.price, plan.model, plan.input_tokens, reservation, plan.tier, content_encoding=content_encoding)


__all__ = ["NAME", "HOSTS", "split_path", "classify", "refusal", "draft", "usage_from_body", "tool_calls_from_body", "output_texts",
           "error_body", "GeminiStreamMeter", "GeminiArrayMeter", "new_meter"]
