"""`pouch proxy`'s arguments: mitmdump options without `--`, the user's options win over pouch's
defaults, and `--listen PORT` means 127.0.0.1:PORT (pure functions, no proxy started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pouch_addon.cli import split_proxy_argv
from pouch_addon.runtime import mitmdump_argv, parse_listen


def test_mitmdump_options_need_no_double_dash():
    ours, mitm = split_proxy_argv(["--home", "/h", "proxy", "-p", "9090", "--set", "pouch_hosts=x", "--mode",
                                   "regular", "--listen", "127.0.0.1:1"])
    assert ours == ["--home", "/h", "proxy", "--listen", "127.0.0.1:1"]
    assert mitm == ["-p", "9090", "--set", "pouch_hosts=x", "--mode", "regular"]
    assert split_proxy_argv(["proxy", "--", "--listen", "x"]) == (["proxy"], ["--listen", "x"])
    assert split_proxy_argv(["status", "-p"]) == (["status", "-p"], [])


@pytest.mark.parametrize("text,expected", [
    ("8191", "127.0.0.1:8191"), ("0.0.0.0:8080", "0.0.0.0:8080"), ("localhost", "localhost:8080"),
    ("[::1]:9000", "[::1]:9000"), (":7000", "127.0.0.1:7000"),
])
def test_listen_forms(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("bad", ["99999", "host:port", "1.2.3.4:0"])
def test_bad_listen_is_refused(bad):
    with pytest.raises(ValueError):
        parse_listen(bad)


def _sets(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a, b in zip(argv, argv[1:]):
        if a == "--set":
            k, _, v = b.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_user_options_win_over_pouchs_defaults(tmp_path: Path):
    argv, listen = mitmdump_argv(tmp_path, "127.0.0.1:8080", ["--set", "confdir=/x", "--set", "http2=true",
                                                               "-p", "9090", "--set", "connection_strategy=eager"])
    sets = _sets(argv)
    assert sets["confdir"] == ["/x"] and sets["http2"] == ["true"] and sets["connection_strategy"] == ["eager"]
    assert argv.count("-p") == 1 and argv[argv.index("-p") + 1] == "9090"
    assert listen == "127.0.0.1:9090"  # what the banner says


def test_pouchs_defaults(tmp_path: Path):
    argv, listen = mitmdump_argv(tmp_path, "127.0.0.1:8191", [])
    sets = _sets(argv)
    assert sets["confdir"] == [str(tmp_path / "mitmproxy")] and sets["http2"] == ["false"]
    assert sets["connection_strategy"] == ["lazy"] and sets["pouch_home"] == [str(tmp_path)]
    assert listen == "127.0.0.1:8191"
    argv, listen = mitmdump_argv(tmp_path, "127.0.0.1:8080", ["--listen-host", "0.0.0.0", "--no-http2"])
    assert listen == "0.0.0.0:8080" and "http2" not in _sets(argv) and argv.count("--listen-host") == 1
