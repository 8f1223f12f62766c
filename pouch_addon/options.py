"""pouch's mitmproxy options with their help, for ``pouch options``.

``mitmdump -s … --options`` prints mitmproxy's options before it loads any script, so it can
never show pouch's: this loads pouch's addons into a fresh option manager and prints those.
"""

from __future__ import annotations

import io


def dump_options() -> str:
    from mitmproxy import optmanager

    from .addons import make_addons

    opts = optmanager.OptManager()

    class Loader:  # the one method pouch's ``load`` hooks use
        def add_option(self, name, typespec, default, help, choices=None):  # noqa: A002, ANN001
            opts.add_option(name, typespec, default, help, choices)

    for addon in make_addons():
        if hasattr(addon, "load"):
            addon.load(Loader())
    out = io.StringIO()
    optmanager.dump_defaults(opts, out)
    return out.getvalue()
