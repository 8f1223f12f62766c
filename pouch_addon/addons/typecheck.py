"""mitmproxy's debug type check of its own objects, without the reference cycles (issue 20).

Unless Python runs with ``-O``, every ``RequestData`` and ``ResponseData`` mitmproxy makes (a
request's head read, a response's head read) checks each field with
``mitmproxy.utils.typecheck.check_option_type``. That function makes its ``TypeError`` before it
knows whether to raise it and keeps it in a local: an ``Optional`` field holding ``None`` (a
streamed body's ``content``, ``trailers``, ``timestamp_end``...) raises and catches one, and each
raised one is a cycle (the error -> its traceback -> the frame -> the error) that only the cyclic
GC frees. A call left ~20 of them (with their frames), so the GC's young generation filled about
once every three calls of a lone caller, and each collection took ~0.3-0.7 ms of the event loop
(``bench/phase_bench.py``'s GC line), wherever it fell: on a request's path, between an answer's
head and the client's. :func:`check_option_type` decides the same (the same ``TypeError``
message when it raises) and makes an error only to raise it, none bound to a local: no cycle.
Installed only over the source it was written against (hashed), as ``walk.LeanWalk``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections import abc
from typing import Any

from mitmproxy import http
from mitmproxy.utils import typecheck

from . import mitm_source

try:
    from types import UnionType
except ImportError:  # pragma: no cover
    UnionType = object()  # type: ignore[assignment,misc]

#: sha256 (first 16 hex digits) of mitmproxy's ``check_option_type`` source this replicates
#: (mitmproxy 11.0.2); another source keeps mitmproxy's own
KNOWN = {"b60e47c7091fa795"}
_NONE = type(None)
_IO = (typing.TextIO, typing.BinaryIO)


def _error(name: str, value: Any, typeinfo: Any) -> TypeError:
    return TypeError(f"Expected {typeinfo} for {name}, but got {type(value)}.")


def check_option_type(name: str, value: Any, typeinfo: Any) -> None:
    """mitmproxy's ``check_option_type`` (same outcome, same message), without its cycles."""
    if typeinfo.__class__ is type and typeinfo not in _IO:  # a plain class: what the last branch does
        if isinstance(value, typeinfo) or (typeinfo is float and isinstance(value, int)):
            return
        raise _error(name, value, typeinfo)
    origin = typing.get_origin(typeinfo)
    if origin is typing.Union or origin is UnionType:
        args = typing.get_args(typeinfo)
        if value is None and _NONE in args:  # the usual Optional field left None: no raise needed
            return
        for T in args:
            try:
                check_option_type(name, value, T)
            except TypeError:
                pass
            else:
                return
        raise _error(name, value, typeinfo)
    elif origin is tuple:
        types = typing.get_args(typeinfo)
        if not isinstance(value, (tuple, list)) or len(types) != len(value):
            raise _error(name, value, typeinfo)
        for i, (x, T) in enumerate(zip(value, types)):
            check_option_type(f"{name}[{i}]", x, T)
        return
    elif origin is abc.Sequence:
        T = typing.get_args(typeinfo)[0]
        if not isinstance(value, (tuple, list)):
            raise _error(name, value, typeinfo)
        for v in value:
            check_option_type(name, v, T)
    elif origin is typing.IO or typeinfo in _IO:
        if not hasattr(value, "read"):
            raise _error(name, value, typeinfo)
    elif typeinfo is typing.Any:
        return
    elif not isinstance(value, typeinfo):
        if typeinfo is float and isinstance(value, int):
            return
        raise _error(name, value, typeinfo)


#: ... and of ``http.MessageData.__post_init__`` (the check of every field, :func:`post_init`)
KNOWN_POST_INIT = {"f65088e210cd9cc1"}
#: (name, type) of each dataclass field, per class: ``dataclasses.fields`` builds its tuple per call
_FIELDS: dict[type, tuple[tuple[str, Any], ...]] = {}


def post_init(self: Any) -> None:
    """``MessageData.__post_init__``: every field checked in order, the fields listed once per class."""
    fs = _FIELDS.get(self.__class__)
    if fs is None:
        fs = _FIELDS[self.__class__] = tuple((f.name, f.type) for f in dataclasses.fields(self))
    for name, typeinfo in fs:
        check_option_type(name, getattr(self, name), typeinfo)


def install() -> bool:
    """Put :func:`check_option_type` in mitmproxy's ``typecheck`` module (where ``http`` and
    ``optmanager`` look it up per call) and :func:`post_init` on ``http.MessageData`` (when it
    calls that module's); False, nothing changed, for an unknown source."""
    current = typecheck.check_option_type
    if current is not check_option_type:
        if not mitm_source.known("check_option_type", KNOWN, current):
            return False
        typecheck.check_option_type = check_option_type
    own = getattr(http.MessageData, "__post_init__", None)
    if own is not None and own is not post_init and mitm_source.known("MessageData.__post_init__", KNOWN_POST_INIT, own):
        http.MessageData.__post_init__ = post_init
    return True


class LeanTypecheck:
    """A member of pouch's ``Chain`` that installs :func:`check_option_type` when mitmproxy loads pouch."""

    def load(self, loader: Any) -> None:
        install()
