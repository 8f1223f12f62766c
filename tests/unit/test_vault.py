"""The encrypted key vault: round trips, wrong keys, tampering, file modes, fingerprints."""

import base64
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import pytest

from pouch_addon.vault import (
    SCRYPT_PARAMS,
    VIRTUAL_KEY_PREFIX,
    Vault,
    VaultError,
    fingerprint,
    hash_virtual_key,
    issue_virtual_key,
    verify_virtual_key,
)

OPENAI = "sk-proj-Zx81kLmQ93hTvBcW7eRgPqYs0aJdNf4u"
ANTHROPIC = "sk-ant-api03-Qw3rTy7uIo9pAsDfGhJkLzXcVbNm12a1b2"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pass_vault(tmp_path_factory) -> Path:
    """One passphrase vault (scrypt is slow on purpose: derive as few times as possible)."""
    path = tmp_path_factory.mktemp("pv") / "home" / "vault.json"
    v = Vault.create(path, "correct horse battery staple")
    v.put("openai", OPENAI)
    v.put("anthropic", ANTHROPIC)
    return path


@pytest.fixture
def key_vault(tmp_path) -> Vault:
    home = tmp_path / "home"
    v = Vault.create(home / "vault.json", None, home / "vault.key")
    v.put("openai", OPENAI)
    v.put("anthropic", ANTHROPIC)
    return v


def reopen(v: Vault) -> Vault:
    return Vault.open(v.path, None, v.path.with_name("vault.key"))


# -- passphrase mode ---------------------------------------------------------------------------
def test_passphrase_round_trip_and_file_format(pass_vault):
    v = Vault.open(pass_vault, "correct horse battery staple")
    assert v.names() == ["anthropic", "openai"]
    assert v.get("openai") == OPENAI and v.get("anthropic") == ANTHROPIC
    doc = json.loads(pass_vault.read_text())
    assert doc["format"] == "pouch-vault" and doc["version"] == 1
    kdf = doc["kdf"]
    assert (kdf["name"], kdf["n"], kdf["r"], kdf["p"]) == ("scrypt", 2**15, 8, 1)
    assert SCRYPT_PARAMS == {"n": 32768, "r": 8, "p": 1}
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert sorted(doc["secrets"]) == ["anthropic", "openai"]
    for entry in doc["secrets"].values():
        assert sorted(entry) == ["ciphertext", "nonce"]
        assert len(base64.b64decode(entry["nonce"])) == 12


def test_wrong_passphrase_is_a_plain_vault_error(pass_vault):
    with pytest.raises(VaultError) as err:
        Vault.open(pass_vault, "correct horse battery stapler")
    assert str(err.value) == f"wrong passphrase or damaged vault file {pass_vault}"
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no cryptography traceback


@pytest.mark.parametrize("passphrase", [None, ""])
def test_passphrase_vault_needs_a_passphrase(pass_vault, passphrase):
    with pytest.raises(VaultError, match="is protected by a passphrase"):
        Vault.open(pass_vault, passphrase, pass_vault.with_name("vault.key"))


def test_no_secret_or_passphrase_in_clear(pass_vault):
    raw = pass_vault.read_bytes()
    for needle in (OPENAI, ANTHROPIC, OPENAI[-12:], "correct horse", "battery"):
        assert needle.encode() not in raw
        assert base64.b64encode(needle.encode()) not in raw


def test_passphrase_is_unicode_normalised(tmp_path):
    path = tmp_path / "vault.json"
    Vault.create(path, "caf\u00e9").put("k", OPENAI)        # é precomposed
    assert Vault.open(path, "cafe\u0301").get("k") == OPENAI  # e + combining accent


def test_salt_is_random(tmp_path):
    a = Vault.create(tmp_path / "a.json", "same")
    b = Vault.create(tmp_path / "b.json", "same")
    salts = {json.loads(v.path.read_text())["kdf"]["salt"] for v in (a, b)}
    assert len(salts) == 2


# -- keyfile mode ------------------------------------------------------------------------------
def test_keyfile_round_trip_and_modes(key_vault):
    home = key_vault.path.parent
    keyfile = home / "vault.key"
    assert mode(key_vault.path) == 0o600
    assert mode(keyfile) == 0o600
    assert mode(home) == 0o700
    assert len(base64.b64decode(keyfile.read_text().strip())) == 32
    assert json.loads(key_vault.path.read_text())["kdf"] == {"name": "keyfile"}
    v = reopen(key_vault)
    assert v.get("openai") == OPENAI and v.get("anthropic") == ANTHROPIC
    raw = key_vault.path.read_bytes()
    assert OPENAI.encode() not in raw and keyfile.read_text().strip().encode() not in raw


def test_wrong_keyfile_is_refused(key_vault, tmp_path):
    other = tmp_path / "other"
    Vault.create(other / "vault.json", None, other / "vault.key")
    with pytest.raises(VaultError) as err:
        Vault.open(key_vault.path, None, other / "vault.key")
    assert str(err.value) == f"wrong passphrase or damaged vault file {key_vault.path}"


def test_keyfile_readable_by_others_is_refused(key_vault):
    keyfile = key_vault.path.with_name("vault.key")
    os.chmod(keyfile, 0o644)
    with pytest.raises(VaultError) as err:
        reopen(key_vault)
    assert str(err.value) == f"vault keyfile {keyfile} is readable by others (mode 0644); run `chmod 600 {keyfile}`"


def test_missing_or_damaged_keyfile(key_vault):
    keyfile = key_vault.path.with_name("vault.key")
    with pytest.raises(VaultError, match="is protected by a keyfile; none was given"):
        Vault.open(key_vault.path, None, None)
    keyfile.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(VaultError, match="is damaged"):
        reopen(key_vault)
    keyfile.unlink()
    with pytest.raises(VaultError, match="does not exist"):
        reopen(key_vault)


def test_existing_keyfile_is_reused(key_vault):
    keyfile = key_vault.path.with_name("vault.key")
    before = keyfile.read_bytes()
    second = Vault.create(key_vault.path.with_name("second.json"), None, keyfile)
    second.put("x", ANTHROPIC)
    assert keyfile.read_bytes() == before
    assert Vault.open(second.path, None, keyfile).get("x") == ANTHROPIC


# -- tampering ---------------------------------------------------------------------------------
def edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_tampered_ciphertext_is_detected(key_vault):
    def flip(doc):
        ct = bytearray(base64.b64decode(doc["secrets"]["openai"]["ciphertext"]))
        ct[5] ^= 0x01
        doc["secrets"]["openai"]["ciphertext"] = base64.b64encode(bytes(ct)).decode()

    edit(key_vault.path, flip)
    v = reopen(key_vault)
    with pytest.raises(VaultError) as err:
        v.get("openai")
    assert str(err.value) == (
        f"secret 'openai' in {key_vault.path} cannot be decrypted: the vault file was modified "
        "or damaged (an entry only decrypts under its own name)"
    )
    assert v.get("anthropic") == ANTHROPIC  # the others are unaffected


def test_swapped_entries_do_not_decrypt(key_vault):
    def swap(doc):
        s = doc["secrets"]
        s["openai"], s["anthropic"] = s["anthropic"], s["openai"]

    edit(key_vault.path, swap)
    v = reopen(key_vault)
    for name in ("openai", "anthropic"):
        with pytest.raises(VaultError, match=f"secret '{name}' .* cannot be decrypted"):
            v.get(name)


def test_tampered_check_fails_at_open(key_vault):
    def swap_check(doc):
        doc["check"] = doc["secrets"]["openai"]

    edit(key_vault.path, swap_check)
    with pytest.raises(VaultError, match="^wrong passphrase or damaged vault file"):
        reopen(key_vault)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "cannot be read"),
        ('{"format": "other"}', "is not a pouch vault"),
        ('{"format": "pouch-vault", "version": 2}', "has version 2; this pouch reads version 1"),
        ('{"format": "pouch-vault", "version": 1}', "is damaged"),
        ('{"format": "pouch-vault", "version": 1, "kdf": {"name": "rot13"}}', "unknown key derivation 'rot13'"),
        ('{"format": "pouch-vault", "version": 1, "kdf": {"name": "keyfile"}, "secrets": {}}', "is damaged"),
        ('{"format": "pouch-vault", "version": 1, "kdf": {"name": "keyfile"}, "secrets": {},'
         ' "check": {"nonce": "!!", "ciphertext": ""}}', "is damaged"),
    ],
)
def test_damaged_files_give_vault_errors(key_vault, content, message):
    key_vault.path.write_text(content)
    with pytest.raises(VaultError, match=re.escape(message)):
        reopen(key_vault)


@pytest.mark.parametrize("n, r, p", [(2**40, 8, 1), (2**20, 8, 1), (3, 8, 1), (2**15, 8, 64)])
def test_absurd_scrypt_parameters_are_refused_without_deriving(pass_vault, tmp_path, n, r, p):
    copy = tmp_path / "vault.json"
    copy.write_text(pass_vault.read_text())
    edit(copy, lambda doc: doc["kdf"].update(n=n, r=r, p=p))
    with pytest.raises(VaultError, match="is damaged"):
        Vault.open(copy, "correct horse battery staple")


def test_missing_vault():
    with pytest.raises(VaultError, match="no vault at"):
        Vault.open(Path("/nonexistent/vault.json"), "x")


# -- operations ----------------------------------------------------------------------------------
def test_put_replace_remove_and_missing(key_vault):
    assert key_vault.put("openai", ANTHROPIC) == fingerprint(ANTHROPIC)
    assert reopen(key_vault).get("openai") == ANTHROPIC
    key_vault.remove("anthropic")
    assert reopen(key_vault).names() == ["openai"]
    assert "openai" in key_vault and "anthropic" not in key_vault
    with pytest.raises(KeyError):
        key_vault.get("anthropic")
    with pytest.raises(KeyError):
        key_vault.remove("anthropic")


def test_each_write_uses_a_fresh_nonce(key_vault):
    key_vault.put("a", OPENAI)
    key_vault.put("b", OPENAI)
    s = json.loads(key_vault.path.read_text())["secrets"]
    assert s["a"]["nonce"] != s["b"]["nonce"] and s["a"]["ciphertext"] != s["b"]["ciphertext"]


def test_writes_are_atomic_replacements(key_vault):
    inode = key_vault.path.stat().st_ino
    key_vault.put("c", OPENAI)
    assert key_vault.path.stat().st_ino != inode  # a new file renamed over the old one
    assert mode(key_vault.path) == 0o600
    assert sorted(p.name for p in key_vault.path.parent.iterdir()) == ["vault.json", "vault.key"]


@pytest.mark.parametrize("name", ["", "a\nb", "nul\x00", "x" * 201])
def test_invalid_names_are_refused(key_vault, name):
    with pytest.raises(VaultError, match="invalid secret name"):
        key_vault.put(name, OPENAI)


def test_empty_secret_is_refused(key_vault):
    with pytest.raises(VaultError):
        key_vault.put("x", "")


def test_create_refusals(tmp_path, key_vault):
    with pytest.raises(VaultError, match="already exists"):
        Vault.create(key_vault.path, None, key_vault.path.with_name("vault.key"))
    with pytest.raises(VaultError, match="not both"):
        Vault.create(tmp_path / "v.json", "pw", tmp_path / "k")
    with pytest.raises(VaultError, match="passphrase is empty"):
        Vault.create(tmp_path / "v.json", "", None)
    with pytest.raises(VaultError, match="needs a keyfile"):
        Vault.create(tmp_path / "v.json", None, None)
    assert not (tmp_path / "v.json").exists()


def test_existing_parent_directory_is_tightened(tmp_path):
    home = tmp_path / "loose"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    Vault.create(home / "vault.json", None, home / "vault.key")
    assert mode(home) == 0o700


def test_repr_shows_no_secret(key_vault):
    text = repr(key_vault)
    assert text == f"<Vault {key_vault.path} (2 secrets)>"


# -- fingerprints ---------------------------------------------------------------------------------
def test_fingerprint_format():
    digest = hashlib.sha256(OPENAI.encode()).hexdigest()[:8]
    assert fingerprint(OPENAI) == f"sk-proj-…Nf4u (sha256:{digest})"
    assert fingerprint(ANTHROPIC).startswith("sk-ant-…a1b2 (sha256:")
    assert fingerprint("AIzaSyA1234567890abcdefghijk").startswith("AIza…hijk (")
    assert fingerprint("0123456789abcdefXYZW").startswith("…XYZW (sha256:")  # no known prefix


def test_short_secrets_show_no_characters():
    for secret in ("hunter2", "sk-abcd", "x" * 15):
        assert re.fullmatch(r"… \(sha256:[0-9a-f]{8}\)", fingerprint(secret))


def test_fingerprint_never_shows_more_than_the_last_four_characters():
    for _ in range(200):
        body = base64.urlsafe_b64encode(os.urandom(30)).decode()
        for secret in (body, "sk-" + body, "sk-proj-" + body, "pk-pouch-" + body[:32]):
            shown = fingerprint(secret).split(" (sha256:")[0]
            prefix, tail = shown.split("…")
            assert tail == secret[-4:]
            assert secret.startswith(prefix) and prefix in ("", "sk-", "sk-proj-", "pk-pouch-")
            # nothing of the random body appears except its last 4 characters
            random_part = secret[len(prefix):-4]
            assert all(random_part[i:i + 5] not in fingerprint(secret) for i in range(len(random_part) - 4))


# -- virtual keys -----------------------------------------------------------------------------------
def test_virtual_keys():
    keys = {issue_virtual_key() for _ in range(500)}
    assert len(keys) == 500
    for k in keys:
        assert k.startswith(VIRTUAL_KEY_PREFIX) and VIRTUAL_KEY_PREFIX == "pk-pouch-"
        assert re.fullmatch(r"pk-pouch-[A-Za-z0-9_-]{32}", k)


def test_virtual_key_hash():
    assert hash_virtual_key("pk-pouch-abc") == hashlib.sha256(b"pk-pouch-abc").hexdigest()
    assert hash_virtual_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    k = issue_virtual_key()
    assert verify_virtual_key(k, hash_virtual_key(k))
    assert not verify_virtual_key(k + "x", hash_virtual_key(k))
