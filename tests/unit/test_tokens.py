"""Token counting: shipped encodings, model rules, cookbook estimates, images, streaming."""

from __future__ import annotations

import base64
import json
import random
import struct
import threading

import pytest
import tiktoken.load
import tiktoken_ext.openai_public as openai_public

from pouch_addon import tokens
from pouch_addon.images import image_size_from_bytes, image_size_from_data_url, image_tokens
from pouch_addon.tokens import (
    StreamTokenCounter, count_text, encoding_for_model, estimate_chat_prompt,
    estimate_completion_prompt, estimate_embedding_input, estimate_responses_input,
)

# --- cookbook data, verbatim from openai-cookbook examples/How_to_count_tokens_with_tiktoken.ipynb

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {"type": "string",
                             "description": "The unit of temperature to return",
                             "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    }
]

WEATHER_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {
        "role": "user",
        "content": "What's the weather like in San Francisco?",
    },
]


# --- loading -------------------------------------------------------------------------------

@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(tokens, "_LOADED", {})  # loads in the test, then the module's own again
    monkeypatch.setattr(tokens, "_COMPACT", {}, raising=False)


def test_encodings_load_offline_from_shipped_files(fresh_cache, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tiktoken tried to fetch or read its cache")

    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_download)
    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    original_loader = openai_public.load_tiktoken_bpe
    o200k, cl100k = tokens.get_encoding("o200k_base"), tokens.get_encoding("cl100k_base")
    assert openai_public.load_tiktoken_bpe is original_loader  # the swap was undone
    assert (o200k.name, o200k.n_vocab) == ("o200k_base", 200019)
    assert (cl100k.name, cl100k.n_vocab) == ("cl100k_base", 100277)
    # token ids published by tiktoken's tests and independent ports
    assert o200k.encode("hello world") == [24912, 2375]
    assert o200k.encode(" 日本語とEnglish 12345!\n") == [17428, 40909, 5330, 28881, 220, 7633, 2548, 4175]
    assert o200k.encode("a\n\n") == [64, 279]
    assert o200k.encode("<|endoftext|>", disallowed_special=()) == [27, 91, 419, 1440, 919, 91, 29]
    assert cl100k.encode("hello world") == [15339, 1917]
    assert cl100k.encode(" 日本語とEnglish 12345!\n") == [76502, 22656, 45918, 252, 19732, 23392, 220, 4513, 1774, 4999]
    assert cl100k.encode("!hello1234567") == [0, 15339, 4513, 10961, 22]
    assert cl100k.encode("<|endoftext|>", disallowed_special=()) == [27, 91, 8862, 728, 428, 91, 29]
    assert cl100k.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]  # cookbook
    assert o200k._special_tokens == {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


def test_corrupt_encoding_file_is_refused_with_its_name(fresh_cache, monkeypatch, tmp_path):
    (tmp_path / "cl100k_base.tiktoken").write_bytes(b"dGVzdA== 0\n")
    monkeypatch.setattr(tokens.importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(tokens.EncodingFileError, match=r"cl100k_base\.tiktoken.*SHA-256"):
        tokens.get_encoding("cl100k_base")


def test_unshipped_encoding_is_a_clear_error():
    with pytest.raises(ValueError, match="p50k_base"):
        tokens.get_encoding("p50k_base")


def test_concurrent_first_loads_build_one_encoding(fresh_cache, monkeypatch):
    builds: list[str] = []
    build = tokens._load_unlocked
    monkeypatch.setattr(tokens, "_load_unlocked", lambda name: builds.append(name) or build(name))
    results: list[object] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        results.append(tokens.get_encoding("cl100k_base"))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert builds == ["cl100k_base"]


# --- model rules and plain text ---------------------------------------------------------------

@pytest.mark.parametrize("model, encoding", [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"), ("chatgpt-4o-latest", "o200k_base"),
    ("gpt-4.1", "o200k_base"), ("gpt-4.1-nano", "o200k_base"), ("gpt-4.5-preview", "o200k_base"),
    ("gpt-5", "o200k_base"), ("gpt-5-mini", "o200k_base"), ("gpt-5.1", "o200k_base"),
    ("o1", "o200k_base"), ("o1-mini", "o200k_base"), ("o3-mini", "o200k_base"), ("o4-mini-2025-04-16", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-4-0613", "cl100k_base"), ("gpt-4-turbo", "cl100k_base"),
    ("gpt-4-32k", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"), ("gpt-3.5-turbo-0125", "cl100k_base"),
    ("gpt-35-turbo-16k", "cl100k_base"), ("text-embedding-3-small", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"), ("davinci-002", "cl100k_base"), ("babbage-002", "cl100k_base"),
    ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"), ("ft:gpt-3.5-turbo-0125:acme::x", "cl100k_base"),
    ("ft:davinci-002:acme::x", "cl100k_base"), ("openai/gpt-4", "cl100k_base"), ("openai/gpt-4o", "o200k_base"),
    ("claude-sonnet-4-5", "o200k_base"), ("gemini-2.5-pro", "o200k_base"), ("some-new-model", "o200k_base"),
])
def test_encoding_for_model(model, encoding):
    assert encoding_for_model(model) == encoding


def test_count_text_and_special_tokens_are_plain_text():
    assert count_text("tiktoken is great!", "gpt-4") == 6
    assert count_text("antidisestablishmentarianism", "gpt-4") == 6  # cookbook
    assert count_text("お誕生日おめでとう", "gpt-3.5-turbo") == 9  # cookbook
    assert count_text("", "gpt-4o") == 0
    # a user typing a special token never raises and is counted as its characters
    assert count_text("<|endoftext|>", "gpt-4o") == 7
    assert count_text("<|endoftext|>", "gpt-4") == 7
    with pytest.raises(ValueError):
        count_text(None, "gpt-4o")  # type: ignore[arg-type]


# --- cookbook estimates ----------------------------------------------------------------------

@pytest.mark.parametrize("model, expected", [
    ("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-3.5-turbo", 129),
    ("gpt-4o", 124), ("gpt-4o-mini", 124),
    ("gpt-3.5-turbo-0301", 127),  # old notebook: 4 per message, -1 per name
])
def test_cookbook_six_messages(model, expected):
    assert estimate_chat_prompt({"model": model, "messages": COOKBOOK_MESSAGES}, model) == expected


@pytest.mark.parametrize("model, expected", [
    ("gpt-4", 105), ("gpt-3.5-turbo", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101),
])
def test_cookbook_weather_tool(model, expected):
    body = {"model": model, "messages": WEATHER_MESSAGES, "tools": WEATHER_TOOLS}
    assert estimate_chat_prompt(body, model) == expected


def test_legacy_functions_count_like_tools():
    functions = [tool["function"] for tool in WEATHER_TOOLS]
    assert estimate_chat_prompt({"messages": WEATHER_MESSAGES, "functions": functions}, "gpt-4o") == 101


def test_schema_parts_the_cookbook_ignores_still_count():
    nested = json.loads(json.dumps(WEATHER_TOOLS))
    nested[0]["function"]["parameters"]["properties"]["days"] = {
        "type": "array", "description": "Days", "items": {"type": "string", "enum": ["mon", "tue"]},
    }
    extra = count_text(json.dumps({"items": {"type": "string", "enum": ["mon", "tue"]}},
                                  separators=(",", ":")), "gpt-4o")
    line = count_text("days:array:Days", "gpt-4o")
    assert estimate_chat_prompt({"messages": WEATHER_MESSAGES, "tools": nested}, "gpt-4o") == 101 + 3 + line + extra


def test_assistant_tool_calls_count_their_json_text():
    call = [{"id": "call_1", "type": "function",
             "function": {"name": "get_current_weather", "arguments": "{\"location\":\"Paris\"}"}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": call},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    call_json = json.dumps(call, separators=(",", ":"))
    expected = (3 + count_text("user", "gpt-4o") + count_text("Weather in Paris?", "gpt-4o")
                + 3 + count_text("assistant", "gpt-4o") + count_text(call_json, "gpt-4o")
                + 3 + count_text("tool", "gpt-4o") + count_text("call_1", "gpt-4o") + count_text("18C", "gpt-4o")
                + 3)
    assert estimate_chat_prompt({"messages": messages}, "gpt-4o") == expected == 54


def _png(width: int, height: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", width, height) + b"\x08\x06\0\0\0"


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def test_array_content_with_text_and_images():
    content = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": _data_url(_png(1024, 1024) + bytes(3000)), "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/dog.png"}},  # size unknown, auto
    ]
    body = {"messages": [{"role": "user", "content": content}]}
    text = count_text("user", "gpt-4o") + count_text("What is in this image?", "gpt-4o")
    assert estimate_chat_prompt(body, "gpt-4o") == 3 + text + 765 + 85 + 1445 + 3 == 2308


def test_input_audio_is_bounded_by_its_duration():
    header = (b"RIFF" + struct.pack("<I", 36 + 96000) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 24000, 48000, 2, 16)
              + b"data" + struct.pack("<I", 96000))
    wav = base64.b64encode(header + bytes(96000)).decode()  # 2 s of 24 kHz 16-bit mono
    assert tokens.audio_tokens_bound(wav, "wav") == 41  # ceil(96044 / 48000 * 20)
    mp3 = base64.b64encode(bytes(8000)).decode()  # unknown bitrate: assume 8 kbit/s -> 8 s
    assert tokens.audio_tokens_bound(mp3, "mp3") == 160
    part = {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [part]}]}
    assert estimate_chat_prompt(body, "gpt-4o-audio-preview") == 3 + 1 + 41 + 3


def test_file_parts_inline_and_by_id():
    pdf = base64.b64encode(b"%PDF-1.7" + bytes(992)).decode()  # 1000 bytes
    inline = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64," + pdf}}
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    body = {"messages": [{"role": "user", "content": [inline, by_id]}]}
    expected = 3 + 1 + count_text("a.pdf", "gpt-4o") + 1000 + tokens.UNKNOWN_FILE_TOKENS + 3
    assert estimate_chat_prompt(body, "gpt-4o") == expected


def test_responses_input_matches_chat_formula():
    body = {"model": "gpt-4o", "input": WEATHER_MESSAGES,
            "tools": [{"type": "function", **WEATHER_TOOLS[0]["function"]}]}
    assert estimate_responses_input(body, "gpt-4o") == 101
    assert estimate_responses_input(body, "gpt-4") == 105


def test_responses_string_input_instructions_and_items():
    simple = {"instructions": "Answer briefly.", "input": "Hello there"}
    expected = (3 + 3 + count_text("system", "gpt-4o") + count_text("Answer briefly.", "gpt-4o")
                + 3 + count_text("user", "gpt-4o") + count_text("Hello there", "gpt-4o"))
    assert estimate_responses_input(simple, "gpt-4o") == expected == 16

    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Describe"},
                                     {"type": "input_image", "image_url": _data_url(_png(512, 512)), "detail": "high"}]},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\":\"x\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "found"},
    ]
    expected = (3 + (3 + 1 + count_text("Describe", "gpt-4o") + 255)
                + (3 + count_text("lookup", "gpt-4o") + count_text("{\"q\":\"x\"}", "gpt-4o"))
                + (3 + count_text("found", "gpt-4o")))
    assert estimate_responses_input({"input": items}, "gpt-4o") == expected == 276


def test_completions_prompt_shapes():
    m = "davinci-002"
    assert estimate_completion_prompt({"prompt": "Say this is a test"}, m) == count_text("Say this is a test", m) == 5
    assert estimate_completion_prompt({"prompt": ["a b", "c"]}, m) == 3
    assert estimate_completion_prompt({"prompt": [1, 2, 3]}, m) == 3
    assert estimate_completion_prompt({"prompt": [[1, 2], [3]]}, m) == 3
    assert estimate_completion_prompt({"prompt": "def f(", "suffix": "return 1"}, m) == 3 + 3
    assert estimate_completion_prompt({}, m) == 1  # default prompt "<|endoftext|>"


def test_embedding_input_shapes():
    m = "text-embedding-3-small"
    assert estimate_embedding_input({"input": "The food was delicious"}, m) == 4
    assert estimate_embedding_input({"input": ["one", "two three"]}, m) == 3
    assert estimate_embedding_input({"input": [5, 6, 7, 8]}, m) == 4
    assert estimate_embedding_input({"input": [[5, 6], [7]]}, m) == 3


@pytest.mark.parametrize("call", [
    lambda: estimate_chat_prompt([], "gpt-4o"),
    lambda: estimate_chat_prompt({}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": "hi"}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": ["hi"]}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": [{"role": "user", "content": 5}]}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": [{"role": "user", "content": ["x"]}]}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": [], "tools": {"a": 1}}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": [], "tools": [{"type": "function", "function": {"name": 3}}]}, "gpt-4o"),
    lambda: estimate_chat_prompt({"messages": [], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"properties": {"a": "string"}}}}]}, "gpt-4o"),
    lambda: estimate_responses_input({"input": 5}, "gpt-4o"),
    lambda: estimate_responses_input({"input": [{"role": "user", "content": {}}]}, "gpt-4o"),
    lambda: estimate_responses_input({"input": [{"type": "function_call", "name": "f", "arguments": {}}]}, "gpt-4o"),
    lambda: estimate_responses_input({"instructions": ["x"]}, "gpt-4o"),
    lambda: estimate_completion_prompt({"prompt": ["a", 1]}, "gpt-4o"),
    lambda: estimate_completion_prompt({"prompt": [True]}, "gpt-4o"),
    lambda: estimate_completion_prompt({"prompt": "a", "suffix": 3}, "gpt-4o"),
    lambda: estimate_embedding_input({}, "text-embedding-3-small"),
    lambda: estimate_embedding_input({"input": {"text": "x"}}, "text-embedding-3-small"),
])
def test_malformed_shapes_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


# --- images ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model, width, height, detail, expected", [
    ("gpt-4o", 1024, 1024, "high", 765),      # 768x768 -> 4 tiles
    ("gpt-4o", 2048, 4096, "high", 1105),     # 1024x2048 -> 768x1536 -> 6 tiles
    ("gpt-4o", 4096, 8192, "low", 85),
    ("gpt-4o", 1024, 1024, "auto", 765),      # auto is priced as high
    ("gpt-4o", 128, 64, "high", 255),         # small images are not enlarged: 1 tile
    ("gpt-4o", None, None, "high", 1445),     # unknown size: 8 tiles, the maximum
    ("gpt-4o", None, None, "low", 85),
    ("gpt-4.1", 1024, 1024, "high", 765), ("gpt-4.5-preview", 1024, 1024, "high", 765),
    ("gpt-4-turbo", 1024, 1024, "high", 765), ("openai/gpt-4o-2024-08-06", 1024, 1024, "high", 765),
    ("gpt-4o-mini", 1024, 1024, "high", 2833 + 4 * 5667), ("gpt-4o-mini", 1, 1, "low", 2833),
    ("gpt-4o-mini", None, None, "auto", 2833 + 8 * 5667),
    ("o1", 1024, 1024, "high", 75 + 4 * 150), ("o3", 512, 512, "low", 75),
    ("gpt-5", 1024, 1024, "high", 70 + 4 * 140), ("gpt-5-chat-latest", 2048, 4096, "high", 70 + 6 * 140),
    ("gpt-5-mini", 1024, 1024, "high", 1659),  # 1024 patches x 1.62 = 1658.88
    ("gpt-5-mini", 1024, 1024, "low", 1659),   # detail does not apply to patch models
    ("gpt-4.1-mini", 1800, 2400, "high", 2353),  # docs example: 1452 patches x 1.62
    ("gpt-4.1-nano", 100, 100, "high", 40),    # 4x4 patches x 2.46 = 39.36
    ("o4-mini", None, None, "high", 2642),     # 1536 x 1.72 = 2641.92
    ("gpt-5-nano", 10000, 10000, "high", 3742),  # shrunk to 39x39 = 1521 patches x 2.46
    ("claude-sonnet-4-5", 1024, 1024, "high", 765),  # unknown model: gpt-4o rule, approximate
])
def test_image_tokens(model, width, height, detail, expected):
    assert image_tokens(model, width, height, detail) == expected


def _jpeg(width: int, height: int, exif_bytes: int = 0) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    app1 = b""
    while exif_bytes > 0:  # large EXIF/ICC segments before the frame header
        chunk = min(exif_bytes, 60000)
        app1 += b"\xff\xe1" + struct.pack(">H", chunk + 2) + bytes(chunk)
        exif_bytes -= chunk
    sof = b"\xff\xc2" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes(9)
    return b"\xff\xd8" + app0 + app1 + b"\xff\xdb" + struct.pack(">H", 4) + b"\0\0" + sof + b"\xff\xda"


def _webp(chunk: bytes, body: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(body)) + b"WEBP" + chunk + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("data, size", [
    (_png(1920, 1080), (1920, 1080)),
    (b"GIF89a" + struct.pack("<HH", 320, 200) + bytes(10), (320, 200)),
    (_jpeg(4032, 3024), (4032, 3024)),
    (_jpeg(640, 480, exif_bytes=70000), (640, 480)),  # SOF beyond the first 4 KB
    (_webp(b"VP8X", b"\0\0\0\0" + (3999).to_bytes(3, "little") + (2999).to_bytes(3, "little")), (4000, 3000)),
    (_webp(b"VP8L", b"\x2f" + ((799) | (599 << 14)).to_bytes(4, "little")), (800, 600)),
    (_webp(b"VP8 ", b"\0\0\0\x9d\x01\x2a" + struct.pack("<HH", 1280, 720)), (1280, 720)),
    (b"\x89PNG\r\n\x1a\n\0\0", None),  # truncated
    (b"not an image", None),
])
def test_image_sizes_from_headers(data, size):
    assert image_size_from_bytes(data) == size
    assert image_size_from_data_url(_data_url(data + bytes(100))) == size


def test_data_url_edge_cases():
    assert image_size_from_data_url("https://example.com/a.png") is None
    assert image_size_from_data_url("data:image/png,rawnotbase64") is None
    assert image_size_from_data_url("data:image/png;base64,!!!!") is None
    big = _data_url(_png(300, 200) + bytes(5_000_000))  # only the head is decoded
    assert image_size_from_data_url(big) == (300, 200)


# --- streaming -------------------------------------------------------------------------------

STREAM_TEXTS = [
    "Hello, world! This is a streamed answer with numbers 1234567 and 3.14159.",
    "def add(a, b):\n    return a + b\n\n\nclass Foo:\n\tpass  # trailing   \n",
    "We'll see; they're here. I'M LOUD, you'd've thought... 'quoted' \"double\"",
    "お誕生日おめでとう！中文文本，没有空格。 Ünïcödé çàfé naïve résumé",
    "emoji 🙂👍🏽🧑‍💻 flags 🇫🇷🇯🇵 and ZWJ\u200d joiners, combining e\u0301",
    "     lots    of\t\t\twhitespace \r\n\r\n\n\n   runs      ",
    "<|endoftext|> special <|endofprompt|> tokens as text",
    "a" * 700 + " " * 900 + "=" * 600 + "\n" * 500 + "ABCdefGHI" * 80,
]


def _random_text(rng: random.Random) -> str:
    atoms = list("abcXYZ '\n\r\t.,!?/-_=+()[]{}0123456789éüß你好世界🙂👍🏽\u200d\u0301") + [
        "we'll", "I'M", "'s", "  ", "\n\n", "<|endoftext|>", "def f(x):\n    return x", "1234567",
    ]
    return "".join(rng.choice(atoms) for _ in range(rng.randint(0, 80)))


def _feed_in_random_pieces(counter: StreamTokenCounter, text: str, rng: random.Random) -> None:
    i = 0
    while i < len(text):
        j = i + rng.choice([1, 1, 2, 3, 4, 7, 16, 50])
        counter.feed(text[i:j])
        i = j


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_stream_total_equals_whole_text_for_any_split(model):
    rng = random.Random(20261123)
    texts = STREAM_TEXTS + [_random_text(rng) for _ in range(400)]
    for text in texts:
        for _ in range(3):
            counter = StreamTokenCounter(model)
            _feed_in_random_pieces(counter, text, rng)
            assert counter.count == count_text(text, model), (model, text)


def test_stream_running_total_after_every_feed():
    rng = random.Random(5)
    text = STREAM_TEXTS[1] + STREAM_TEXTS[3]
    counter = StreamTokenCounter("gpt-4o")
    fed = ""
    i = 0
    while i < len(text):
        j = i + rng.randint(1, 6)
        fed += text[i:j]
        assert counter.feed(text[i:j]) == counter.count == count_text(fed, "gpt-4o")
        i = j
    assert counter.feed("") == counter.count


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_stream_long_single_pieces_stay_exact_and_bounded(model):
    rng = random.Random(11)
    runs = [
        " " * 20000,
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5000)),  # one huge word
        "".join(chr(rng.randint(0x4E00, 0x4FFF)) for _ in range(3000)),  # CJK without punctuation
        "".join(rng.choice(["🙂", "👍🏽", "★", "→", "="]) for _ in range(3000)),
        "".join(rng.choice("  \t\n") for _ in range(5000)),
    ]
    for text in runs:
        counter = StreamTokenCounter(model)
        _feed_in_random_pieces(counter, text, rng)
        assert counter.count == count_text(text, model)
        assert len(counter._tail) <= StreamTokenCounter._LONG_TAIL + 50  # work per feed stays bounded


def test_stream_feed_rejects_non_text():
    with pytest.raises(ValueError):
        StreamTokenCounter("gpt-4o").feed(b"bytes")  # type: ignore[arg-type]


def _spaced_text(rng: random.Random) -> str:
    """Text dense in spaces next to every kind of character, where the counter cuts its tail."""
    words = ["the", "We'll", "I'M", "naïve", "ÉCOLE", "42", "1234567", "你好", "🙂", "x²", "e\u0301", "(a)",
             "<|endoftext|>", "def", "—", "...", "'s", "ǅ", "\u0301", "٣", "ⅷ"]
    gaps = [" ", " ", " ", "  ", "   ", "\n", " \n ", "\t ", "\u00a0 ", "\u3000 ", "\u2003", "\x1c ", "\x1f ",
            "\u200b ", "\x85 ", "\u2028 ", "\r\n ", " \r", "", "/ ", "- "]
    return "".join(rng.choice(words) + rng.choice(gaps) for _ in range(rng.randint(0, 60)))


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_stream_cuts_at_spaces_stay_exact(model):
    rng = random.Random(20261124)
    for _ in range(600):
        text = _spaced_text(rng)
        counter = StreamTokenCounter(model)
        _feed_in_random_pieces(counter, text, rng)
        assert counter.count == count_text(text, model), (model, text)


def test_stream_prose_keeps_a_short_tail_without_the_regex(monkeypatch):
    counter = StreamTokenCounter("gpt-4o")
    monkeypatch.setattr(counter, "_settle_pieces", None)  # the fast path alone must do for prose
    text = " ".join(["The quick brown fox jumps over the lazy dog, again and again."] * 40)
    for i in range(0, len(text), 5):
        counter.feed(text[i:i + 5])
        assert len(counter._tail) <= StreamTokenCounter._SHORT_TAIL
    assert counter.count == count_text(text, "gpt-4o")


# --- memory and the event loop (issue 16, item 4) --------------------------------------------

def test_a_loaded_encoding_keeps_no_python_copy_of_its_ranks(fresh_cache):
    """The Rust core holds the ranks; tiktoken's Python dict of them (~27 MiB resident for
    o200k_base) is dropped once the encoding is built, and counting is unchanged."""
    enc = tokens.get_encoding("o200k_base")
    assert not hasattr(enc, "_mergeable_ranks")
    assert enc.encode("hello world") == [24912, 2375]
    assert enc.decode([24912, 2375]) == "hello world"
    assert tokens.count_text("hello world", "gpt-4o") == 2


def test_loaded_only_refuses_to_load_and_leaves_nothing_loaded(fresh_cache):
    """The gate plans small bodies on the event loop inside `loaded_only()`. A plan needs no
    encoding (the input's byte bound) until one is loaded; an exact count asked for raises
    `NotLoaded` (the gate moves it to a worker thread) instead of blocking the loop for the
    ~0.3-1 s of the first load."""
    from pouch_addon.plan import PlanSettings, draft_plan
    from pouch_addon.pricing import PriceTable

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "stream": True}
    table = PriceTable.load()
    exact = PlanSettings(exact_input=True)
    with tokens.loaded_only():
        bounded = draft_plan("POST", "/v1/chat/completions", body, table=table)
        with pytest.raises(tokens.NotLoaded):
            draft_plan("POST", "/v1/chat/completions", body, table=table, settings=exact)
        with pytest.raises(tokens.NotLoaded):
            tokens.StreamTokenCounter("gpt-4o-mini")
    assert tokens._LOADED == {}
    assert bounded.input_method == "utf8_bytes"
    threaded = draft_plan("POST", "/v1/chat/completions", body, table=table, settings=exact)  # loads o200k_base
    assert set(tokens._LOADED) == {"o200k_base"}
    assert threaded.input_method == "tiktoken" and threaded.input_tokens < bounded.input_tokens
    with tokens.loaded_only():  # once loaded, every plan counts exactly
        assert draft_plan("POST", "/v1/chat/completions", body, table=table) == threaded
        with pytest.raises(tokens.NotLoaded):  # another model's encoding is still not loaded
            tokens.count_text("hello", "gpt-4")
    assert tokens.count_text("hello", "gpt-4") == 1  # outside the block, it loads


def test_loaded_only_is_per_thread(fresh_cache):
    """A worker thread planning while the event loop is inside `loaded_only()` may still load."""
    results: list[int] = []
    with tokens.loaded_only():
        t = threading.Thread(target=lambda: results.append(tokens.count_text("hello world", "gpt-4o")))
        t.start()
        t.join()
    assert results == [2]


@pytest.mark.parametrize("text", ["x" * 700 + "\ud83d" + "y" * 300, "\ud83d" * 900 + "z", "a" * 520 + "\udfff\ud800" * 30])
def test_stream_counter_takes_lone_surrogates_in_a_long_piece(text):
    """JSON's ``"\\ud83d"`` decodes to a lone surrogate; in a long single piece the counter settled
    its tail with ``str.encode("utf-8")``, which raised (and cut a stream off, or ended the checkpoint pass)."""
    from pouch_addon.tokens import StreamTokenCounter, count_text
    c = StreamTokenCounter("gpt-4o")
    for i in range(0, len(text), 50):
        c.feed(text[i:i + 50])
    assert c.count == count_text(text, "gpt-4o")


def test_encoding_for_model_memo_is_bounded_and_answers_the_same():
    """The memo of encoding_for_model (asked per stream and checkpoint) never grows past its bound
    and gives what the rules give, for names seen before and after it was emptied."""
    from pouch_addon import tokens
    names = [f"gpt-4-{k}" if k % 2 else f"openai/gpt-4o-{k}" for k in range(3000)] + ["ft:gpt-3.5-turbo:org::x"]
    for name in names + names[:10]:
        assert encoding_for_model(name) == tokens._encoding_for(name)
        assert len(tokens._ENCODING_OF) <= 1024
    assert encoding_for_model("ft:gpt-3.5-turbo:org::x") == "cl100k_base"
    assert encoding_for_model("openai/gpt-4o-7") == "o200k_base"


def test_prompt_counts_are_memoised_exactly_and_bounded(monkeypatch):
    """A prompt text is counted once (clients resend their system prompt and history every call);
    a hit is that very text, so the count is tiktoken's, and the memo empties past its bounds."""
    monkeypatch.setattr(tokens, "_MEMO", {})
    monkeypatch.setattr(tokens, "_memo_chars", 0)
    enc = tokens.get_encoding(encoding_for_model("gpt-4o"))
    body = {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES}
    first = estimate_chat_prompt(body, "gpt-4o")
    calls = []
    real = tokens._n
    monkeypatch.setattr(tokens, "_n", lambda e, t: calls.append(t) or real(e, t))
    assert estimate_chat_prompt(body, "gpt-4o") == first
    assert calls == []  # every text came from the memo
    monkeypatch.setattr(tokens, "_MEMO_ENTRIES", 4)
    texts = ["hello <|endoftext|> world", "héllo wörld", "a" * 50, "hello <|endoftext|> world!"]
    for t in texts:
        assert tokens._Exact(enc).count(t) == len(enc.encode(t, disallowed_special=()))
        assert tokens._Exact(enc).count(t) == len(enc.encode(t, disallowed_special=()))
    assert len(tokens._MEMO[enc.name]) <= 4
    monkeypatch.setattr(tokens, "_MEMO_CHARS", 10)
    tokens._Exact(enc).count("x" * 11)  # longer than the whole bound: counted, not kept
    assert "x" * 11 not in tokens._MEMO[enc.name]
