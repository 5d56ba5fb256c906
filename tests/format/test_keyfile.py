"""Key files (upstream KeyConfig) and the key/password sources (docs/formats.md §6.1, §6.2)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.vectors import VECTOR_PASSWORD

import snapfs.keysource as keysource
from snapfs.errors import (
    CorruptDataError,
    CryptKeyError,
    KeyRequiredError,
    SnapfsError,
    UsageError,
    WrongKeyError,
    WrongPasswordError,
)
from snapfs.format.crypt import format_fingerprint
from snapfs.format.keyfile import KeyFile, Pbkdf2Params, ScryptParams, create_keyfile
from snapfs.keysource import PASSWORD_ENV_VARS, load_crypt_config, read_password

KEY_NAMES = ("key-scrypt.json", "key-pbkdf2.json", "key-none.json")


@pytest.fixture(scope="module")
def report(vectors):
    return json.loads((vectors / "report.json").read_text())


@pytest.fixture(scope="module")
def key_texts(vectors) -> dict[str, bytes]:
    return {name: (vectors / "keys" / name).read_bytes() for name in KEY_NAMES}


@pytest.fixture
def no_tty(monkeypatch):
    monkeypatch.setattr(keysource, "_stdin_is_tty", lambda: False)


# --- golden vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", KEY_NAMES)
def test_vector_key_unlocks(report, key_texts, name):
    key_file = KeyFile.from_json(key_texts[name], name=name)
    crypt = key_file.unlock(VECTOR_PASSWORD)
    assert crypt.key.hex() == report["raw_key_hex"]
    assert format_fingerprint(crypt.fingerprint) == report["keys"][name]["fingerprint"]
    assert format_fingerprint(crypt.fingerprint) == report["fingerprint_full"]
    assert key_file.fingerprint == crypt.fingerprint


@pytest.mark.parametrize("name", KEY_NAMES)
def test_vector_key_serializes_identically(key_texts, name):
    assert KeyFile.from_json(key_texts[name]).to_json() == key_texts[name]
    assert KeyFile.from_json(key_texts[name].decode()).to_json() == key_texts[name]


def test_vector_key_fields(key_texts):
    scrypt = KeyFile.from_json(key_texts["key-scrypt.json"])
    assert isinstance(scrypt.kdf, ScryptParams)
    assert (scrypt.kdf.n, scrypt.kdf.r, scrypt.kdf.p, len(scrypt.kdf.salt)) == (65536, 8, 1, 32)
    assert scrypt.hint == "pbs-vector-password"
    assert scrypt.created == scrypt.modified == "2026-11-22T11:13:52+00:00"
    pbkdf2 = KeyFile.from_json(key_texts["key-pbkdf2.json"])
    assert isinstance(pbkdf2.kdf, Pbkdf2Params)
    assert (pbkdf2.kdf.iter, len(pbkdf2.kdf.salt)) == (65535, 32)
    assert pbkdf2.hint is None
    none = KeyFile.from_json(key_texts["key-none.json"])
    assert none.kdf is None and not none.needs_password
    assert scrypt.needs_password and pbkdf2.needs_password


def test_unprotected_key_ignores_password(report, key_texts):
    key_file = KeyFile.from_json(key_texts["key-none.json"])
    assert key_file.unlock(None).key.hex() == report["raw_key_hex"]


# --- wrong passwords, keys, missing passwords ---------------------------------------------------


@pytest.mark.parametrize("name", ["key-scrypt.json", "key-pbkdf2.json"])
def test_wrong_password(key_texts, name):
    with pytest.raises(WrongPasswordError, match=name) as info:
        KeyFile.from_json(key_texts[name], name=name).unlock(b"not-the-password")
    # The hint of the vector is the password itself: neither may show.
    assert VECTOR_PASSWORD.decode() not in str(info.value)
    assert "not-the-password" not in str(info.value)


def test_too_short_password(key_texts):
    with pytest.raises(WrongPasswordError):
        KeyFile.from_json(key_texts["key-pbkdf2.json"]).unlock(b"abc")


def test_missing_password(key_texts):
    with pytest.raises(KeyRequiredError, match="password"):
        KeyFile.from_json(key_texts["key-pbkdf2.json"], name="k.json").unlock(None)


def test_stored_fingerprint_mismatch(key_texts):
    obj = json.loads(key_texts["key-none.json"])
    obj["fingerprint"] = ":".join(["00"] * 32)
    with pytest.raises(WrongKeyError, match="fingerprint"):
        KeyFile.from_json(json.dumps(obj)).unlock(None)


def test_missing_fingerprint_still_unlocks(report, key_texts):
    obj = json.loads(key_texts["key-pbkdf2.json"])
    del obj["fingerprint"]
    key_file = KeyFile.from_json(json.dumps(obj))
    assert key_file.fingerprint is None
    assert key_file.unlock(VECTOR_PASSWORD).key.hex() == report["raw_key_hex"]
    assert b"fingerprint" not in key_file.to_json()


# --- malformed key files ----------------------------------------------------------------------


def _mutated(text: bytes, **changes) -> str:
    obj = json.loads(text)
    for member, value in changes.items():
        if value is ...:
            del obj[member]
        else:
            obj[member] = value
    return json.dumps(obj)


@pytest.mark.parametrize(
    "changes",
    [
        {"data": ...},
        {"data": "not base64!"},
        {"data": 17},
        {"created": ...},
        {"created": "yesterday"},
        {"modified": "2026-13-40T11:13:52+00:00"},
        {"kdf": "Scrypt"},
        {"kdf": {"Argon2": {"salt": ""}}},
        {"kdf": {"Scrypt": {"n": 65536, "r": 8, "salt": "AA=="}}},
        {"kdf": {"Scrypt": {"n": -1, "r": 8, "p": 1, "salt": "AA=="}}},
        {"kdf": {"PBKDF2": {"iter": True, "salt": "AA=="}}},
        {"kdf": {"PBKDF2": {"iter": 1.5, "salt": "AA=="}}},
        {"kdf": {"PBKDF2": {"iter": 10, "salt": "AA=="}, "Scrypt": {}}},
        {"fingerprint": "a5:2d"},
        {"hint": 5},
    ],
)
def test_corrupt_key_json(key_texts, changes):
    text = _mutated(key_texts["key-scrypt.json"], **changes)
    with pytest.raises(CorruptDataError, match="my-key.json"):
        KeyFile.from_json(text, name="my-key.json")


@pytest.mark.parametrize(
    "text",
    [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"kdf":null,"kdf":null}', '{"hint":"\\ud800"}'],
)
def test_not_a_key_file(text):
    with pytest.raises(CorruptDataError, match="my-key.json"):
        KeyFile.from_json(text, name="my-key.json")


def test_deeply_nested_json():
    with pytest.raises(CorruptDataError):
        KeyFile.from_json("[" * 100_000 + "]" * 100_000)


def test_base64_without_padding_is_accepted(key_texts):
    obj = json.loads(key_texts["key-none.json"])
    obj["data"] = obj["data"].rstrip("=")
    assert KeyFile.from_json(json.dumps(obj)).unlock(None).key == (
        KeyFile.from_json(key_texts["key-none.json"]).unlock(None).key
    )


def test_unprotected_key_of_wrong_length(key_texts):
    text = _mutated(key_texts["key-none.json"], data="AAAA", fingerprint=...)
    with pytest.raises(CorruptDataError, match="3 bytes"):
        KeyFile.from_json(text).unlock(None)


def test_wrapped_key_of_wrong_length(key_texts):
    text = _mutated(key_texts["key-pbkdf2.json"], data="AAAA")
    with pytest.raises(CorruptDataError, match="wrapped key"):
        KeyFile.from_json(text).unlock(VECTOR_PASSWORD)


def test_unusable_scrypt_parameters(key_texts):
    obj = json.loads(key_texts["key-scrypt.json"])
    obj["kdf"]["Scrypt"]["n"] = 1000  # not a power of two
    with pytest.raises(CorruptDataError, match="derivation"):
        KeyFile.from_json(json.dumps(obj)).unlock(VECTOR_PASSWORD)
    obj["kdf"]["Scrypt"]["n"] = 2**40  # needs far more memory than upstream allows
    with pytest.raises(CorruptDataError, match="derivation"):
        KeyFile.from_json(json.dumps(obj)).unlock(VECTOR_PASSWORD)


# --- creation ---------------------------------------------------------------------------------

RAW = bytes(range(32, 64))


@pytest.mark.parametrize("kdf", ["scrypt", "pbkdf2"])
def test_create_protected_round_trip(kdf):
    key_file = create_keyfile(RAW, b"secret-pw", kdf, hint="my-hint")
    text = key_file.to_json()
    again = KeyFile.from_json(text)
    assert again == key_file
    assert again.unlock(b"secret-pw").key == RAW
    with pytest.raises(WrongPasswordError):
        again.unlock(b"other-pw")
    obj = json.loads(text)
    assert list(obj) == ["kdf", "created", "modified", "data", "fingerprint", "hint"]
    assert len(again.data) == 64 and RAW not in again.data
    if kdf == "scrypt":
        assert list(obj["kdf"]["Scrypt"]) == ["n", "r", "p", "salt"]
        assert (again.kdf.n, again.kdf.r, again.kdf.p) == (65536, 8, 1)
    else:
        assert list(obj["kdf"]["PBKDF2"]) == ["iter", "salt"]
        assert again.kdf.iter == 65535
    assert len(again.kdf.salt) == 32
    assert b" " not in text  # compact, as serde_json::to_string


def test_create_unprotected_matches_vector_shape(report, key_texts):
    raw = bytes.fromhex(report["raw_key_hex"])
    key_file = create_keyfile(raw, None, created="2026-11-22T11:13:52+00:00")
    assert key_file.to_json() == key_texts["key-none.json"]


def test_create_default_timestamp_has_numeric_offset():
    created = create_keyfile(RAW, None).created
    assert len(created) == 25 and created[19] in "+-"
    assert KeyFile.from_json(create_keyfile(RAW, None).to_json()).created == created


@pytest.mark.parametrize(
    ("password", "kdf"), [(b"abc", "scrypt"), (b"long enough", "argon2"), (b"long enough", None)]
)
def test_create_rejects(password, kdf):
    with pytest.raises(UsageError):
        create_keyfile(RAW, password, kdf)


def test_create_rejects_bad_key():
    with pytest.raises(CryptKeyError):
        create_keyfile(bytes(16), None)


# --- key sources ------------------------------------------------------------------------------


def test_password_env_var_names():
    assert PASSWORD_ENV_VARS == ("SNAPFS_KEY_PASSWORD", "PBS_ENCRYPTION_PASSWORD")


def test_read_password_from_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_bytes(b"first line\nsecond line\n")
    env = {"SNAPFS_KEY_PASSWORD": "from-env"}
    assert read_password(password_file=str(pw), environ=env) == b"first line"
    pw.write_bytes(b"windows\r\n")
    assert read_password(password_file=pw, environ={}) == b"windows"
    pw.write_bytes(b"no newline")
    assert read_password(password_file=pw, environ={}) == b"no newline"


def test_read_password_env_order(no_tty):
    both = {"SNAPFS_KEY_PASSWORD": "snapfs-pw", "PBS_ENCRYPTION_PASSWORD": "pbs-pw"}
    assert read_password(environ=both) == b"snapfs-pw"
    assert read_password(environ={"PBS_ENCRYPTION_PASSWORD": "pbs-pw"}) == b"pbs-pw"
    assert read_password(environ={}, prompt_for="k.json") is None


def test_read_password_prompts_only_on_tty(monkeypatch):
    prompts = []
    monkeypatch.setattr(keysource.getpass, "getpass", lambda p: prompts.append(p) or "typed-pw")
    monkeypatch.setattr(keysource, "_stdin_is_tty", lambda: True)
    assert read_password(environ={}) is None  # no key file named: no prompt
    assert read_password(environ={}, prompt_for="my.json") == b"typed-pw"
    assert prompts == ["Password for key file my.json: "]
    monkeypatch.setattr(keysource, "_stdin_is_tty", lambda: False)
    assert read_password(environ={}, prompt_for="my.json") is None
    assert len(prompts) == 1


def test_unreadable_password_file(tmp_path):
    with pytest.raises(CryptKeyError, match="missing-pw"):
        read_password(password_file=str(tmp_path / "missing-pw"), environ={})


@pytest.mark.parametrize("name", KEY_NAMES)
def test_load_crypt_config_from_password_file(tmp_path, vectors, report, name):
    pw = tmp_path / "pw"
    pw.write_bytes(VECTOR_PASSWORD + b"\n")
    crypt = load_crypt_config(vectors / "keys" / name, password_file=str(pw), environ={})
    assert crypt.key.hex() == report["raw_key_hex"]


def test_load_crypt_config_from_env(vectors, report, no_tty):
    env = {"PBS_ENCRYPTION_PASSWORD": VECTOR_PASSWORD.decode()}
    crypt = load_crypt_config(vectors / "keys" / "key-pbkdf2.json", environ=env)
    assert crypt.key.hex() == report["raw_key_hex"]


def test_load_crypt_config_unprotected_needs_no_password(vectors, report, no_tty):
    crypt = load_crypt_config(str(vectors / "keys" / "key-none.json"), environ={})
    assert crypt.key.hex() == report["raw_key_hex"]


def test_load_crypt_config_without_password(vectors, no_tty):
    path = vectors / "keys" / "key-scrypt.json"
    with pytest.raises(KeyRequiredError) as info:
        load_crypt_config(path, environ={})
    message = str(info.value)
    assert (
        str(path) in message and "--password-file" in message and "SNAPFS_KEY_PASSWORD" in message
    )


def test_load_crypt_config_wrong_password_hides_it(vectors, no_tty):
    env = {"SNAPFS_KEY_PASSWORD": "a-wrong-password"}
    with pytest.raises(WrongPasswordError) as info:
        load_crypt_config(vectors / "keys" / "key-pbkdf2.json", environ=env)
    assert "a-wrong-password" not in str(info.value)
    assert "key-pbkdf2.json" in str(info.value)


def test_load_crypt_config_unreadable(tmp_path):
    path = tmp_path / "nokey.json"
    with pytest.raises(CryptKeyError, match="nokey.json.*No such file"):
        load_crypt_config(path, environ={})
    with pytest.raises(CryptKeyError, match="Is a directory"):
        load_crypt_config(tmp_path, environ={})


def test_load_crypt_config_corrupt(tmp_path):
    path = tmp_path / "broken.json"
    path.write_bytes(b'{"kdf": null')
    with pytest.raises(CorruptDataError, match="broken.json"):
        load_crypt_config(path, environ={})


def test_load_crypt_config_huge_file(tmp_path):
    path = tmp_path / "huge.json"
    path.write_bytes(b" " * (1024 * 1024 + 10))
    with pytest.raises(CryptKeyError, match="huge.json"):
        load_crypt_config(path, environ={})


# --- fuzzing ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_from_json_bytes(text):
    with contextlib.suppress(SnapfsError):
        KeyFile.from_json(text)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(KEY_NAMES),
    st.sampled_from(["kdf", "created", "modified", "data", "fingerprint", "hint", "extra"]),
    _json_values,
)
def test_fuzz_from_json_members(vectors, name, member, value):
    obj = json.loads((vectors / "keys" / name).read_text())
    obj[member] = value
    try:
        key_file = KeyFile.from_json(json.dumps(obj))
    except SnapfsError:
        return
    # Whatever parses must serialize again and parse to the same thing.
    assert KeyFile.from_json(key_file.to_json()) == key_file
    if key_file.kdf is None:  # unlocking a protected key costs a KDF run; keep fuzzing fast
        with contextlib.suppress(SnapfsError):
            key_file.unlock(None)
