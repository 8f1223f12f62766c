"""Options pouch's hooks read on every request are kept by ``configure`` (``ctx.options.X``
deep-copies an option's default on each read): a change at run time, and a rolled-back one,
must still reach the next request."""

from __future__ import annotations

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from pouch_addon.addons.scope import Scope


def call(body: bytes) -> http.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.sni = "api.openai.com"
    f.server_conn.address = ("api.openai.com", 443)
    f.request = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", body,
                                  {"Host": "api.openai.com", "Content-Type": "application/json"})
    return f


def test_the_body_limit_and_unknown_endpoint_policy_follow_configure_and_its_rollback():
    scope = Scope()
    big = b'{"model":"gpt-4o-mini","messages":[],"x":"' + b"a" * (3 * 1024 * 1024 // 2) + b'"}'
    with taddons.context(scope) as tctx:
        scope.configure(set(tctx.options.keys()))  # as mitmproxy does when it adds the addon
        tctx.configure(scope, pouch_max_body_mb=1)
        f = call(big)
        scope.request(f)
        assert f.response is not None and f.response.status_code == 413
        tctx.configure(scope, pouch_max_body_mb=2)
        f = call(big)
        scope.request(f)
        assert f.response is None
        with pytest.raises(exceptions.OptionsError):  # rolled back: the limit stays 2 MiB
            tctx.configure(scope, pouch_max_body_mb=1, pouch_unknown_endpoints="bogus")
        f = call(big)
        scope.request(f)
        assert f.response is None

        unknown = call(b"{}")
        unknown.request.path = "/v1/some/new/thing"
        scope.request(unknown)
        assert unknown.response is not None and unknown.response.status_code == 403
        tctx.configure(scope, pouch_unknown_endpoints="pass")
        unknown.response = None
        scope.request(unknown)
        assert unknown.response is None
