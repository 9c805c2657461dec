"""Settings: one frozen class, built from defaults < TOML file < ``LB_*`` environment < flags.

Every key is documented, with its default, in ``configs/lastbackend.toml``; a test keeps that file
and :class:`Settings` in step. Unknown keys in a file are an error, so a typo is never silently
ignored.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

DEFAULT_LISTEN = "127.0.0.1:2967"
_DOMAIN = re.compile(
    r"(?=.{1,200}$)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)+"
)


class ConfigError(ValueError):
    pass


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "lastbackend"


def _hidden_tokens(tokens: tuple[str, ...]) -> str:
    """How a token list appears in ``repr(settings)``: how many, never what (logs, tracebacks)."""
    return repr(tuple("***" for _ in tokens))


def _hidden_token(token: str) -> str:
    """How a single token appears in ``repr(settings)``: whether one is set, never what."""
    return repr("***" if token else "")


def _hidden_password(url: str) -> str:
    """A URL in ``repr(settings)`` with any userinfo password shown as ``***``."""
    return repr(masked_url(url))


def masked_url(url: str) -> str:
    """``scheme://user:***@host...``: the URL with the password of its userinfo hidden."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


@attrs.frozen
class Settings:
    # [etcd]
    etcd_endpoints: tuple[str, ...] = ()
    """Empty: the daemon starts its embedded etcd and uses ``embedded_client``."""
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    etcd_timeout: float = 5.0
    etcd_watch_thread: bool = True
    """Read watches on a thread of their own (:meth:`lastbackend.store.etcd.Etcd.watch_batches`)."""
    embedded_client: str = "127.0.0.1:23790"
    embedded_peer: str = "127.0.0.1:23800"
    # [api]
    listen: str = DEFAULT_LISTEN
    max_body_bytes: int = 1 << 20
    shutdown_timeout: float = 30.0
    api_hosts: tuple[str, ...] = ()
    """Host names the API answers to besides loopback names and IP addresses (``api.example.com``,
    or ``*.example.com`` for its subdomains): any other ``Host`` is refused (DNS rebinding)."""
    cors_origins: tuple[str, ...] = ()
    """Web origins (``https://dash.example.com``) whose pages may call the API from a browser.
    Empty: CORS is off, and a write from any page but the API's own origin is a 403."""
    max_streams: int = 256
    """``/api/events`` streams open at once in this process (each holds an etcd watch and a
    socket for as long as its client stays); one more is a 429."""
    max_log_follows: int = 64
    """Followed logs (``?follow=true`` on service, build and droplet logs) open at once in this
    process; each polls etcd or holds a connection per container to its node. One more: 429."""
    # [auth]
    admin_tokens: tuple[str, ...] = attrs.field(default=(), repr=_hidden_tokens)
    read_tokens: tuple[str, ...] = attrs.field(default=(), repr=_hidden_tokens)
    node_token: str = attrs.field(default="", repr=_hidden_token)
    """The credential between API processes and node agents, never a user's: the API sends it
    (and only it) to nodes, and a node's ``/node/...`` routes accept it and nothing else. Empty:
    ``lastbackend daemon`` generates one in memory for itself; a node on a non-loopback address
    refuses to start; an API reads no node's logs."""
    # [daemon]
    data_dir: Path = attrs.field(factory=_default_data_dir)
    event_loop: str = "uvloop"
    """``asyncio`` or ``uvloop``: the event loop every process runs on (docs/benchmarks.md)."""
    # [log]
    log_level: str = "info"
    log_format: str = "json"
    # [node]
    node_name: str = ""
    """This Docker host's node name. Empty: the machine's host name."""
    docker_host: str = ""
    """The Docker engine to drive (like DOCKER_HOST). Empty: the local socket."""
    node_advertise: str = ""
    """The URL API processes reach this node's agent at (for logs). Empty: ``http://<listen>``."""
    node_eviction_timeout: float = 300.0
    """Seconds the services controller leaves a lost node's pods in place before it moves them."""
    # [secrets]
    secret_key: str = attrs.field(default="", repr=False)
    """A Fernet key (never printed). Empty: the key in ``secret_key_file``."""
    secret_key_file: Path | None = None
    """Empty: ``<data_dir>/secret.key``, created with mode 0600 on first use."""
    # [lifecycle]
    lifecycle_descriptor: Path | None = None
    """A ``lifecycle.toml`` (document 002). Empty: the one shipped in the package."""
    platform_api: str = ""
    """The platform API staging uses (like ``CNB_PLATFORM_API``). Empty: the newest supported."""
    # [staging]
    default_stack: str = ""
    """The stack a buildpack droplet uses when neither it nor its app names one. Empty:
    ``debian`` once its images are built, else ``busybox``."""
    buildpacks_dir: Path | None = None
    """Extra buildpacks, one directory each, detected before the built-in ones."""
    staging_ca_certificates: Path | None = None
    """A PEM bundle put in staging containers as their CA bundle. ``None``: the host's
    ``/etc/ssl/certs/ca-certificates.crt`` when there is one, so installs behind a
    TLS-inspecting proxy verify as on the host."""
    staging_build_env: tuple[str, ...] = (
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    )  # fmt: skip
    """Host environment variables passed into staging containers (those set on the staging
    controller's host), for package registries reached through a proxy."""
    staging_cache_max_bytes: int = 1 << 30
    """The most an app's cache layers may take to be kept for its next staging (0: none kept)."""
    staging_concurrency: int = 2
    staging_timeout: float = 900.0
    max_upload_bytes: int = 512 << 20
    """The largest bits upload, and the most its archive may unpack to."""
    staging_max_log_bytes: int = 4 << 20
    """A droplet's staging log is cut here: one line says so, later output is dropped."""
    # [registry]
    platform_registry: str = ""
    """``host:port`` that staged droplets (and later builds) are pushed to. Empty: keep them in
    the local Docker engine only, which suits one host."""
    # [builds]
    build_concurrency: int = 2
    """How many builds run at once on the build controller's host; later ones wait queued."""
    build_timeout: float = 1800.0
    build_dockerfile: str = "Dockerfile"
    """The Dockerfile's path inside the checkout."""
    build_max_log_bytes: int = 4 << 20
    """A build's log is cut here: one line says so, later output is dropped."""
    # [git]
    git_max_checkout_bytes: int = 512 << 20
    """The most one clone (work tree and ``.git``) may take on disk; past it git is stopped and
    the build or staging fails."""
    # [events]
    events_amqp_listen: str = "127.0.0.1:5673"
    """Where the leading ``events`` controller accepts AMQP 1.0 receivers. Empty or ``off``:
    nowhere."""
    events_forward: str = attrs.field(default="", repr=_hidden_password)
    """An AMQP 1.0 broker (``amqp://[user:password@]host[:port]``) that also gets every event."""
    # [router]
    router_http: str = "127.0.0.1:8080"
    """Where the router's Caddy serves plain HTTP."""
    router_https: str = "127.0.0.1:8443"
    """Where the router's Caddy serves HTTPS."""
    router_domain: str = "lb.localhost"
    """Services are served at ``<service>.<project>.<domain>``; ``*.localhost`` resolves to
    loopback with no DNS set-up."""
    router_acme_email: str = ""
    """Set: certificates from an ACME CA (Let's Encrypt) for public hosts, with this account
    email. Empty: every host gets one from the routers' internal CA."""
    router_caddy: str = "caddy"
    """The Caddy binary (a path, or a name looked up in PATH)."""

    @property
    def blob_dir(self) -> Path:
        """Package bits, droplet logs and build logs: files, never etcd values."""
        return self.data_dir / "blobs"

    @property
    def embedded_tls_dir(self) -> Path:
        """The embedded etcd's CA, server and client certificates (``store/etcd_tls.py``): made
        by the daemon at its first start, read by every subcommand that uses that etcd."""
        return self.data_dir / "etcd-tls"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The etcd endpoints to talk to: configured ones, or the embedded server's."""
        return self.etcd_endpoints or (self.embedded_client,)

    @property
    def embedded(self) -> bool:
        return not self.etcd_endpoints

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.listen, "listen")

    @property
    def secret_key_path(self) -> Path:
        """The key file used when no key is configured: the same for every process of one host."""
        return self.secret_key_file or self.data_dir / "secret.key"

    @property
    def node(self) -> str:
        """The node name in force: configured, or the host name lowercased to a DNS label."""
        import socket

        return self.node_name or socket.gethostname().split(".")[0].lower()

    @property
    def node_address(self) -> str:
        """The URL written into ``nodes/<name>``: where API processes fetch this node's logs."""
        return (self.node_advertise or f"http://{self.listen}").rstrip("/")

    @property
    def amqp_listen(self) -> tuple[str, int] | None:
        """Where the events controller listens, or None when it does not."""
        if self.events_amqp_listen in ("", "off"):
            return None
        return split_host_port(self.events_amqp_listen, "events.amqp_listen")

    @property
    def router_http_address(self) -> tuple[str, int]:
        return split_host_port(self.router_http, "router.http")

    @property
    def router_https_address(self) -> tuple[str, int]:
        return split_host_port(self.router_https, "router.https")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.admin_tokens or self.read_tokens)

    def check(self, roles: frozenset[str] = frozenset()) -> None:
        """Refuse settings that would start an unsafe or broken server running ``roles``."""
        host, _ = self.host_port
        if not self.auth_enabled and not is_loopback(host):
            raise ConfigError(
                f"listen address {self.listen} is not loopback and no token is configured: "
                "set --token / LB_TOKEN (and optionally --read-token) before exposing the API"
            )
        if "node" in roles and not self.node_token and not is_loopback(host):
            raise ConfigError(
                f"listen address {self.listen} is not loopback and no node token is configured: "
                "set --node-token / LB_NODE_TOKEN (auth.node_token) to the same value on this "
                "node and on the API processes, so that only they can read its containers' logs"
            )
        if self.node_token:
            if not _NODE_TOKEN.fullmatch(self.node_token):
                raise ConfigError(
                    "auth.node_token (LB_NODE_TOKEN, --node-token) must be 16 to 512 visible "
                    "ASCII characters, no spaces; make one with: python3 -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'"
                )
            if self.node_token in self.admin_tokens + self.read_tokens:
                raise ConfigError(
                    "auth.node_token (LB_NODE_TOKEN) must differ from every admin and read "
                    "token: nodes accept only it, and user routes never do"
                )
        if bool(self.etcd_cert) != bool(self.etcd_key):
            raise ConfigError("--etcd-cert and --etcd-key go together")
        if (self.etcd_cert or self.etcd_key) and not self.etcd_ca:
            raise ConfigError("--etcd-cert/--etcd-key need --etcd-ca")
        for endpoint in self.etcd_endpoints:
            split_host_port(endpoint, "etcd endpoint")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.node):
            raise ConfigError(
                f"node name must be a DNS label (LB_NODE_NAME, --name): {self.node!r}"
            )
        problem = node_address_problem(self.node_advertise) if self.node_advertise else None
        if problem is not None:
            raise ConfigError(
                "node.advertise (LB_NODE_ADVERTISE) must be an http:// or https:// URL with a "
                f"host and no more, like http://10.0.0.5:2967: {self.node_advertise!r} {problem}"
            )
        if self.node_eviction_timeout < 0:
            raise ConfigError("node.eviction_timeout must be 0 or more seconds")
        if self.event_loop not in EVENT_LOOPS:
            raise ConfigError(
                f"daemon.event_loop (LB_EVENT_LOOP) must be asyncio or uvloop: {self.event_loop!r}"
            )
        if self.log_level not in {"debug", "info", "warning", "error"}:
            raise ConfigError(f"log level must be debug, info, warning or error: {self.log_level}")
        if self.log_format not in {"json", "console"}:
            raise ConfigError(f"log format must be json or console: {self.log_format}")
        if self.max_body_bytes < 1024:
            raise ConfigError("api.max_body_bytes must be at least 1024")
        if self.max_streams < 1:
            raise ConfigError("api.max_streams (LB_API_MAX_STREAMS) must be at least 1")
        if self.max_log_follows < 1:
            raise ConfigError("api.max_log_follows (LB_API_MAX_LOG_FOLLOWS) must be at least 1")
        for host in self.api_hosts:
            if not is_host_pattern(host):
                raise ConfigError(
                    "api.hosts (LB_API_HOSTS) takes lowercase host names like api.example.com "
                    f"or *.example.com, without a port: {host!r}"
                )
        for origin in self.cors_origins:
            if not is_origin(origin):
                raise ConfigError(
                    "api.cors_origins (LB_API_CORS_ORIGINS) takes web origins like "
                    "https://dash.example.com or http://localhost:3000 (no path, no '*'): "
                    f"{origin!r}"
                )
        if self.staging_concurrency < 1:
            raise ConfigError("staging.concurrency must be at least 1")
        if self.staging_timeout <= 0:
            raise ConfigError("staging.timeout must be a positive number of seconds")
        if self.max_upload_bytes < 1024:
            raise ConfigError("staging.max_upload_bytes must be at least 1024")
        if self.staging_max_log_bytes < 1024:
            raise ConfigError("staging.max_log_bytes must be at least 1024")
        if self.build_max_log_bytes < 1024:
            raise ConfigError("builds.max_log_bytes must be at least 1024")
        if self.git_max_checkout_bytes < 1024:
            raise ConfigError("git.max_checkout_bytes must be at least 1024")
        if self.build_concurrency < 1:
            raise ConfigError("builds.concurrency must be at least 1")
        if self.build_timeout <= 0:
            raise ConfigError("builds.timeout must be a positive number of seconds")
        dockerfile = self.build_dockerfile
        if not dockerfile or dockerfile.startswith("/") or ".." in dockerfile.split("/"):
            raise ConfigError(
                "builds.dockerfile (LB_BUILDS_DOCKERFILE) must be a path inside the checkout, "
                f"like Dockerfile or docker/app.Dockerfile: {dockerfile!r}"
            )
        if self.platform_registry and not re.fullmatch(
            r"[a-z0-9.-]+(:[0-9]{1,5})?|\[[0-9a-f:]+\](:[0-9]{1,5})?", self.platform_registry
        ):
            raise ConfigError(
                "registry.platform (LB_PLATFORM_REGISTRY) must be a registry host[:port], like "
                f"127.0.0.1:5000: {self.platform_registry!r}"
            )
        self.amqp_listen  # noqa: B018 - raises ConfigError on a bad address
        if self.events_forward and not is_amqp_url(self.events_forward):
            raise ConfigError(
                "events.forward (LB_EVENTS_FORWARD) must be an amqp:// or amqps:// URL with a "
                f"host, like amqp://broker.example.com:5672: {self.events_forward!r}"
            )
        if self.router_http_address[1] == self.router_https_address[1] and (
            self.router_http_address[0] == self.router_https_address[0]
        ):
            raise ConfigError("router.http and router.https must be different addresses")
        if not _DOMAIN.fullmatch(self.router_domain) or self.router_domain[-1].isdigit():
            raise ConfigError(
                "router.domain (LB_DOMAIN, --domain) must be a lowercase host name like "
                f"lb.example.com, got {self.router_domain!r}"
            )
        if self.router_acme_email and not re.fullmatch(
            r"[^@\s]+@[^@\s]+\.[^@\s]+", self.router_acme_email
        ):
            raise ConfigError(
                f"router.acme_email is not an email address: {self.router_acme_email!r}"
            )
        if self.secret_key and not is_fernet_key(self.secret_key):
            raise ConfigError(
                "secrets.key (LB_SECRET_KEY) is not a Fernet key (32 bytes in url-safe base64, "
                "44 characters); make one with: python3 -c 'from cryptography.fernet import "
                "Fernet; print(Fernet.generate_key().decode())'"
            )


def split_host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be host:port, got {value!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOST_PATTERN = re.compile(
    r"(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)


def is_host_pattern(value: str) -> bool:
    """A lowercase host name, or ``*.`` and one (its subdomains): an ``api.hosts`` entry."""
    return len(value) <= 253 and bool(_HOST_PATTERN.fullmatch(value))


def is_origin(value: str) -> bool:
    """``http(s)://host[:port]`` exactly as a browser sends it in ``Origin`` (no slash, no path)."""
    authority = value.partition("://")[2]
    plain = not any(c in authority for c in "/?#@")
    return is_http_url(value) and plain and value == value.lower()


def is_http_url(value: str) -> bool:
    """``http(s)://host[:port]`` with no path (nodes' addresses: :func:`node_address_problem`)."""
    return _is_url(value, ("http", "https"))


_NODE_TOKEN = re.compile(r"[!-~]{16,512}")
_ADDRESS_HOST = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
NODE_ADDRESS_MAX = 300


def node_address_problem(value: str) -> str | None:
    """Why ``value`` cannot be a node's address, or None: it must be ``http(s)://host[:port]``.

    The one check of a node address, for the agent that publishes it (``node.advertise``, or
    ``http://<listen>``) and for the API that reads it from ``nodes/<name>`` before it sends the
    node token there: anyone who can write that key chooses where the token goes, so nothing but
    a scheme, a host and a port may come through. No userinfo (a credential, or a trick that
    shows one host and dials another), no path, query or fragment (the API appends absolute
    routes), no character a URL parser would drop or a header would not carry. In ``config``,
    the lowest layer, so that ``Settings.check``, ``node`` and ``api`` all reach it.
    """
    if not value:
        return "is empty"
    if len(value) > NODE_ADDRESS_MAX:
        return f"is longer than {NODE_ADDRESS_MAX} characters"
    if not (value.isascii() and value.isprintable()) or " " in value or "\\" in value:
        return "holds spaces, control, backslash or non-ASCII characters"
    from urllib.parse import urlsplit

    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "is not an http:// or https:// URL"
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        return "has a port that is not a number from 1 to 65535"
    if "@" in url.netloc:
        return "has userinfo (user:password@); a node address carries no credentials"
    if "?" in value or "#" in value:
        return "has a query or fragment"
    if url.path not in ("", "/"):
        return f"has a path ({url.path!r}); give the scheme, host and port only"
    if url.netloc.endswith(":"):
        return "has an empty port"
    host = url.netloc.rpartition(":")[0] if port is not None else url.netloc
    if not host or not _ADDRESS_HOST.fullmatch(host):
        return "has no host name or IP address"
    if port == 0:
        return "has port 0"
    return None


def is_amqp_url(value: str) -> bool:
    """``amqp(s)://[user:password@]host[:port]``: a broker the events controller can forward to."""
    return _is_url(value, ("amqp", "amqps"))


def _is_url(value: str, schemes: tuple[str, ...]) -> bool:
    """A URL of one of ``schemes`` with a host, a valid port if any, and no path."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return url.scheme in schemes and bool(url.hostname) and url.path in ("", "/")


def is_fernet_key(value: str) -> bool:
    """What ``cryptography``'s Fernet accepts, checked here so config needs no crypto import."""
    try:
        return len(base64.urlsafe_b64decode(value.encode())) == 32
    except (binascii.Error, ValueError):
        return False


# file layout: [section] key -> Settings field
FILE_KEYS: Mapping[str, Mapping[str, str]] = {
    "etcd": {
        "endpoints": "etcd_endpoints",
        "ca": "etcd_ca",
        "cert": "etcd_cert",
        "key": "etcd_key",
        "timeout": "etcd_timeout",
        "watch_thread": "etcd_watch_thread",
        "embedded_client": "embedded_client",
        "embedded_peer": "embedded_peer",
    },
    "api": {
        "listen": "listen",
        "max_body_bytes": "max_body_bytes",
        "shutdown_timeout": "shutdown_timeout",
        "hosts": "api_hosts",
        "cors_origins": "cors_origins",
        "max_streams": "max_streams",
        "max_log_follows": "max_log_follows",
    },
    "auth": {
        "admin_tokens": "admin_tokens",
        "read_tokens": "read_tokens",
        "node_token": "node_token",
    },
    "daemon": {"data_dir": "data_dir", "event_loop": "event_loop"},
    "log": {"level": "log_level", "format": "log_format"},
    "node": {
        "name": "node_name",
        "docker": "docker_host",
        "advertise": "node_advertise",
        "eviction_timeout": "node_eviction_timeout",
    },
    "secrets": {"key": "secret_key", "key_file": "secret_key_file"},
    "lifecycle": {"descriptor": "lifecycle_descriptor", "platform_api": "platform_api"},
    "staging": {
        "default_stack": "default_stack",
        "buildpacks_dir": "buildpacks_dir",
        "ca_certificates": "staging_ca_certificates",
        "build_env": "staging_build_env",
        "cache_max_bytes": "staging_cache_max_bytes",
        "concurrency": "staging_concurrency",
        "timeout": "staging_timeout",
        "max_upload_bytes": "max_upload_bytes",
        "max_log_bytes": "staging_max_log_bytes",
    },
    "registry": {"platform": "platform_registry"},
    "builds": {
        "concurrency": "build_concurrency",
        "timeout": "build_timeout",
        "dockerfile": "build_dockerfile",
        "max_log_bytes": "build_max_log_bytes",
    },
    "git": {"max_checkout_bytes": "git_max_checkout_bytes"},
    "events": {"amqp_listen": "events_amqp_listen", "forward": "events_forward"},
    "router": {
        "http": "router_http",
        "https": "router_https",
        "domain": "router_domain",
        "acme_email": "router_acme_email",
        "caddy": "router_caddy",
    },
}

ENV_KEYS: Mapping[str, str] = {
    "LB_ETCD_ENDPOINTS": "etcd_endpoints",
    "LB_ETCD_CA": "etcd_ca",
    "LB_ETCD_CERT": "etcd_cert",
    "LB_ETCD_KEY": "etcd_key",
    "LB_ETCD_WATCH_THREAD": "etcd_watch_thread",
    "LB_EVENT_LOOP": "event_loop",
    "LB_LISTEN": "listen",
    "LB_API_HOSTS": "api_hosts",
    "LB_API_CORS_ORIGINS": "cors_origins",
    "LB_API_MAX_STREAMS": "max_streams",
    "LB_API_MAX_LOG_FOLLOWS": "max_log_follows",
    "LB_DATA_DIR": "data_dir",
    "LB_TOKEN": "admin_tokens",
    "LB_READ_TOKEN": "read_tokens",
    "LB_NODE_TOKEN": "node_token",
    "LB_LOG_LEVEL": "log_level",
    "LB_NODE_NAME": "node_name",
    "LB_DOCKER_HOST": "docker_host",
    "LB_NODE_ADVERTISE": "node_advertise",
    "LB_NODE_EVICTION_TIMEOUT": "node_eviction_timeout",
    "LB_SECRET_KEY": "secret_key",
    "LB_SECRET_KEY_FILE": "secret_key_file",
    "LB_LIFECYCLE_DESCRIPTOR": "lifecycle_descriptor",
    # upstream's name first, so our own wins when both are set
    "CNB_PLATFORM_API": "platform_api",
    "LB_LIFECYCLE_PLATFORM_API": "platform_api",
    "LB_DEFAULT_STACK": "default_stack",
    "LB_BUILDPACKS_DIR": "buildpacks_dir",
    "LB_STAGING_MAX_LOG_BYTES": "staging_max_log_bytes",
    "LB_STAGING_CA_CERTIFICATES": "staging_ca_certificates",
    "LB_STAGING_BUILD_ENV": "staging_build_env",
    "LB_PLATFORM_REGISTRY": "platform_registry",
    "LB_BUILDS_CONCURRENCY": "build_concurrency",
    "LB_BUILDS_TIMEOUT": "build_timeout",
    "LB_BUILDS_DOCKERFILE": "build_dockerfile",
    "LB_BUILDS_MAX_LOG_BYTES": "build_max_log_bytes",
    "LB_GIT_MAX_CHECKOUT_BYTES": "git_max_checkout_bytes",
    "LB_EVENTS_AMQP_LISTEN": "events_amqp_listen",
    "LB_EVENTS_FORWARD": "events_forward",
    "LB_ROUTER_HTTP": "router_http",
    "LB_ROUTER_HTTPS": "router_https",
    "LB_DOMAIN": "router_domain",
    "LB_ROUTER_ACME_EMAIL": "router_acme_email",
    "LB_ROUTER_CADDY": "router_caddy",
}


EVENT_LOOPS = ("asyncio", "uvloop")

_BOOLS = {"true": True, "1": True, "false": False, "0": False}
"""How an environment variable spells a boolean (a file uses TOML's own)."""


def _coerce(field: str, value: Any, source: str) -> Any:
    kind = attrs.fields_dict(Settings)[field].type
    if "tuple" in str(kind):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: must be a list of strings")
        return tuple(v for v in value if v)
    if "Path" in str(kind):
        if not isinstance(value, str | Path):
            raise ConfigError(f"{source}: must be a path")
        return Path(value).expanduser() if str(value) else None
    if kind in ("bool", bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLS:
            return _BOOLS[value.lower()]
        raise ConfigError(f"{source}: must be true or false, got {value!r}")
    if kind in ("float", float):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{source}: must be a number")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{source}: must be a number, got {value!r}") from None
    if kind in ("int", int):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: must be an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{source}: must be an integer, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{source}: must be a string")
    return value


def from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    out: dict[str, Any] = {}
    for section, values in data.items():
        if section not in FILE_KEYS or not isinstance(values, dict):
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key, value in values.items():
            field = FILE_KEYS[section].get(key)
            if field is None:
                raise ConfigError(f"{path}: unknown key {section}.{key}")
            out[field] = _coerce(field, value, f"{path}: {section}.{key}")
    return out


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    return {
        field: _coerce(field, environ[name], name)
        for name, field in ENV_KEYS.items()
        if environ.get(name)
    }


def load(
    *,
    file: Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    values: dict[str, Any] = {}
    if file is not None:
        values |= from_file(file)
    values |= from_env(os.environ if environ is None else environ)
    for field, value in (flags or {}).items():
        if value is not None:
            values[field] = _coerce(field, value, f"--{field.replace('_', '-')}")
    return Settings(**values)
