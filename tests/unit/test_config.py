"""Settings: defaults < file < environment < flags, and the refusals that keep a server safe."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from lastbackend import config
from lastbackend.config import ConfigError, Settings
from tests.conftest import REPO

SHIPPED = REPO / "configs" / "lastbackend.toml"


def test_shipped_file_states_every_default() -> None:
    loaded = config.load(file=SHIPPED, environ={})
    defaults = Settings()
    assert attrs.evolve(loaded, data_dir=defaults.data_dir) == defaults


def test_shipped_file_documents_every_key() -> None:
    text = SHIPPED.read_text()
    for section, names in config.FILE_KEYS.items():
        assert f"[{section}]" in text
        for name in names:
            assert re.search(rf"^#? ?{name} =", text, re.M), f"{section}.{name} is not documented"


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "lb.toml"
    file.write_text('[api]\nlisten = "127.0.0.1:1000"\n[log]\nlevel = "debug"\n')
    env = {"LB_LISTEN": "127.0.0.1:2000", "LB_ETCD_ENDPOINTS": "a:1, b:2"}
    s = config.load(file=file, environ=env, flags={"listen": "127.0.0.1:3000"})
    assert s.listen == "127.0.0.1:3000"
    assert s.log_level == "debug"
    assert s.etcd_endpoints == ("a:1", "b:2")
    assert config.load(file=file, environ=env).listen == "127.0.0.1:2000"
    assert config.load(file=file, environ={}).listen == "127.0.0.1:1000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api]\nlisten_on = 'x'\n", "unknown key api.listen_on"),
        ("[web]\n", "unknown section [web]"),
        ("[api]\nmax_body_bytes = 'big'\n", "api.max_body_bytes: must be an integer"),
        ("[auth]\nadmin_tokens = 'x'\n", None),  # a string is one token, which is fine
        ("[api\n", "lb.toml"),
    ],
)
def test_bad_files_are_refused_with_the_key(tmp_path: Path, text: str, message: str | None) -> None:
    file = tmp_path / "lb.toml"
    file.write_text(text)
    if message is None:
        assert config.load(file=file, environ={}).admin_tokens == ("x",)
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load(file=file, environ={})


def test_non_loopback_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="token"):
        Settings(listen="0.0.0.0:2967").check()
    Settings(listen="0.0.0.0:2967", admin_tokens=("t",)).check()
    Settings(listen="[::1]:2967").check()
    Settings(listen="localhost:2967").check()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(listen="nope"), "listen must be host:port"),
        (Settings(etcd_endpoints=("host",)), "etcd endpoint must be host:port"),
        (Settings(etcd_cert=Path("c")), "go together"),
        (Settings(etcd_cert=Path("c"), etcd_key=Path("k")), "need --etcd-ca"),
        (Settings(log_level="loud"), "log level"),
        (Settings(max_body_bytes=10), "max_body_bytes"),
    ],
)
def test_broken_settings_are_refused(settings: Settings, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings.check()


def test_embedded_default_uses_the_embedded_endpoint() -> None:
    assert Settings().embedded
    assert Settings().endpoints == ("127.0.0.1:23790",)
    external = Settings(etcd_endpoints=("10.0.0.1:2379",))
    assert not external.embedded
    assert external.endpoints == ("10.0.0.1:2379",)


def test_browser_settings_from_file_and_env(tmp_path: Path) -> None:
    file = tmp_path / "lb.toml"
    file.write_text('[api]\nhosts = ["lb.example.com"]\ncors_origins = ["https://dash.example"]\n')
    s = config.load(file=file, environ={})
    assert (s.api_hosts, s.cors_origins) == (("lb.example.com",), ("https://dash.example",))
    env = {"LB_API_HOSTS": "a.example, *.b.example", "LB_API_CORS_ORIGINS": "http://localhost:3000"}
    s = config.load(file=file, environ=env)
    assert s.api_hosts == ("a.example", "*.b.example")
    assert s.cors_origins == ("http://localhost:3000",)
    s.check()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(api_hosts=("lb.example.com:2967",)), "api.hosts"),
        (Settings(api_hosts=("Upper.example",)), "api.hosts"),
        (Settings(api_hosts=("*",)), "api.hosts"),
        (Settings(cors_origins=("*",)), "api.cors_origins"),
        (Settings(cors_origins=("https://dash.example/",)), "api.cors_origins"),
        (Settings(cors_origins=("https://dash.example/app",)), "api.cors_origins"),
        (Settings(cors_origins=("dash.example",)), "api.cors_origins"),
        (Settings(cors_origins=("null",)), "api.cors_origins"),
        (Settings(cors_origins=("ftp://dash.example",)), "api.cors_origins"),
    ],
)
def test_bad_browser_settings_are_refused(settings: Settings, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        settings.check()


def test_the_settings_repr_never_shows_a_token_or_password() -> None:
    """Settings end up in tracebacks and debug logs (rich prints locals): secrets must not."""
    s = Settings(
        admin_tokens=("adm-s3cret-1", "adm-s3cret-2"),
        read_tokens=("ro-s3cret",),
        secret_key="k" * 43 + "=",
        events_forward="amqps://events:br0ker-pw@broker.example.com:5671",
    )
    shown = repr(s)
    for secret in ("adm-s3cret-1", "adm-s3cret-2", "ro-s3cret", "k" * 43, "br0ker-pw"):
        assert secret not in shown
    assert "admin_tokens=('***', '***')" in shown
    assert "amqps://events:***@broker.example.com:5671" in shown
    assert s.admin_tokens == ("adm-s3cret-1", "adm-s3cret-2")  # only the repr is masked
