"""Secrets at rest: Fernet tokens, where the key comes from, the key file (DESIGN.md 7)."""

from __future__ import annotations

import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lastbackend import config
from lastbackend.config import ConfigError, Settings
from lastbackend.secrets import SecretError, Secrets, generate_key, is_token, load_or_create_key

PASSWORD = "hunter2-ÿ-secret"


def test_a_token_is_ciphertext_that_decrypts_back() -> None:
    secrets = Secrets(generate_key())
    token = secrets.encrypt(PASSWORD)
    assert is_token(token)
    assert token.startswith("gAAAAA")
    assert PASSWORD not in token
    assert secrets.decrypt(token) == PASSWORD


def test_equal_secrets_give_different_tokens() -> None:
    secrets = Secrets(generate_key())
    assert secrets.encrypt(PASSWORD) != secrets.encrypt(PASSWORD)


def test_the_wrong_key_is_a_clear_error_without_the_secret() -> None:
    token = Secrets(generate_key()).encrypt(PASSWORD)
    other = Secrets(generate_key(), source="secrets.key (LB_SECRET_KEY)")
    with pytest.raises(SecretError) as caught:
        other.decrypt(token)
    message = str(caught.value)
    assert "encrypted with another key" in message
    assert "LB_SECRET_KEY" in message
    assert PASSWORD not in message
    assert token not in message


def test_a_tampered_token_does_not_decrypt() -> None:
    secrets = Secrets(generate_key())
    token = secrets.encrypt(PASSWORD)
    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    with pytest.raises(SecretError, match="corrupt"):
        secrets.decrypt(tampered)
    with pytest.raises(SecretError):
        secrets.decrypt("not a token")


@pytest.mark.parametrize("key", ["", "short", "x" * 44, generate_key()[:-2]])
def test_a_malformed_key_is_refused(key: str) -> None:
    with pytest.raises(SecretError, match="not a Fernet key"):
        Secrets(key)


def test_key_file_is_created_0600_on_first_use_and_reused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data" / "lb")
    path = tmp_path / "data" / "lb" / "secret.key"
    assert settings.secret_key_path == path
    assert not path.exists()
    first = Secrets.from_settings(settings)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = path.read_bytes()
    token = first.encrypt(PASSWORD)
    second = Secrets.from_settings(settings)
    assert path.read_bytes() == content
    assert second.decrypt(token) == PASSWORD
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_key_file_setting_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "lb.key"
    settings = Settings(data_dir=tmp_path / "data", secret_key_file=path)
    token = Secrets.from_settings(settings).encrypt(PASSWORD)
    assert path.exists()
    assert not (tmp_path / "data" / "secret.key").exists()
    assert Secrets(path.read_bytes().strip()).decrypt(token) == PASSWORD


def test_key_from_settings_wins_over_the_file(tmp_path: Path) -> None:
    file_key = load_or_create_key(tmp_path / "secret.key")
    configured = generate_key()
    secrets = Secrets.from_settings(Settings(data_dir=tmp_path, secret_key=configured))
    token = secrets.encrypt(PASSWORD)
    assert Secrets(configured).decrypt(token) == PASSWORD
    with pytest.raises(SecretError):
        Secrets(file_key).decrypt(token)
    assert (tmp_path / "secret.key").read_bytes().strip() == file_key


def test_a_configured_key_creates_no_file(tmp_path: Path) -> None:
    Secrets.from_settings(Settings(data_dir=tmp_path / "d", secret_key=generate_key()))
    assert not (tmp_path / "d").exists()


def test_processes_starting_together_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key(path), range(32)))
    assert keys == {path.read_bytes().strip()}
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_an_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("not a key\n")
    with pytest.raises(SecretError, match=re.escape(f"the key file {tmp_path / 'secret.key'}")):
        Secrets.from_settings(Settings(data_dir=tmp_path))


def test_the_key_comes_from_file_env_and_is_never_printed(tmp_path: Path) -> None:
    in_file, in_env = generate_key(), generate_key()
    file = tmp_path / "lb.toml"
    file.write_text(f'[secrets]\nkey = "{in_file}"\nkey_file = "/etc/lb/key"\n')
    assert config.load(file=file, environ={}).secret_key == in_file
    loaded = config.load(file=file, environ={"LB_SECRET_KEY": in_env})
    assert loaded.secret_key == in_env
    assert loaded.secret_key_path == Path("/etc/lb/key")
    assert in_env not in repr(loaded)
    env_file = config.load(environ={"LB_SECRET_KEY_FILE": str(tmp_path / "k")})
    assert env_file.secret_key_path == tmp_path / "k"


def test_a_malformed_configured_key_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match=re.escape("secrets.key (LB_SECRET_KEY)")):
        Settings(secret_key="not-a-key").check()
    Settings(secret_key=generate_key()).check()
