"""Which destinations are local model servers (``pouch_local_hosts``): their calls cost $0.

The scope addon asks this one (``match``) for every request: a call to a listed host and port
speaks the ``local`` provider's formats (``providers/local.py``) and is metered at an explicit $0,
never refused for money; pause, wallets' expiry and rpm/tpm and the audit log still apply.
"""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import ctx, exceptions

from ..providers.local import DEFAULT_LOCAL_HOSTS, LocalHosts, LocalHostsError


class LocalModels:
    def __init__(self) -> None:
        self.hosts = LocalHosts.parse(DEFAULT_LOCAL_HOSTS)

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_local_hosts", typespec=Sequence[str], default=list(DEFAULT_LOCAL_HOSTS),
            help="Local model servers whose calls are metered at $0 (never refused for money; pause and "
                 "wallets' rpm/tpm still apply): HOST:PORT (IPv6 as [::1]:PORT) or HOST for any port. "
                 "Default: localhost, 127.0.0.1 and [::1] on 11434 (Ollama), 8080 (llama.cpp server), "
                 "1234 (LM Studio) and 8000 (vLLM). Repeat the option for several; an empty value "
                 "(pouch_local_hosts=) lists none.",
        )

    def configure(self, updated: set[str]) -> None:
        if "pouch_local_hosts" in updated:
            try:
                self.hosts = LocalHosts.parse(ctx.options.pouch_local_hosts)
            except LocalHostsError as exc:
                raise exceptions.OptionsError(f"pouch_local_hosts: {exc}") from None

    def match(self, host: str, port: int) -> bool:
        return self.hosts.match(host, port)
