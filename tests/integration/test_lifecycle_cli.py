"""``lastbackend lifecycle inspect | check``, run as users run them: the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = Path(sys.executable).parent / "lastbackend"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CNB_", "LB_LIFECYCLE_"))}
    return subprocess.run(
        [str(SCRIPT), "lifecycle", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        cwd=REPO,
        timeout=60,
        check=False,
    )


SEED = """
[apis]
[apis.buildpack]
  deprecated = ["1"]
  supported = ["1.2", "2.1"]
[apis.platform]
  deprecated = ["0.4"]
  supported = ["0.4", "0.5", "1.3"]

[lifecycle]
  version = "0.9.0"
"""


def test_inspect_prints_the_pack_lifecycle_block() -> None:
    out = run("inspect")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "Lifecycle:\n"
        "  Version: 1.0.0\n"
        "  Buildpack APIs:\n"
        "    Deprecated: (none)\n"
        "    Supported: 0.7, 0.8, 0.9, 0.10, 0.11, 0.12\n"
        "  Platform APIs:\n"
        "    Deprecated: (none)\n"
        "    Supported: 0.12, 0.13, 0.14\n"
    )


def test_inspect_json_is_the_api_body() -> None:
    out = run("inspect", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["expanded"]["buildpack"]["deprecated"] == []
    assert body["expanded"]["buildpack"]["supported"] == [
        "0.7",
        "0.8",
        "0.9",
        "0.10",
        "0.11",
        "0.12",
    ]
    assert "io.buildpacks.lifecycle.apis" in body["labels"]


def test_inspect_another_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "lifecycle.toml"
    path.write_text(
        '[apis.buildpack]\nsupported = ["0.10"]\n[apis.platform]\nsupported = ["0.13"]\n'
        '[lifecycle]\nversion = "0.20.0"\n'
    )
    out = run("inspect", "--descriptor", str(path))
    assert out.returncode == 0, out.stderr
    assert "Version: 0.20.0" in out.stdout
    assert "Deprecated: (none)" in out.stdout
    out = run("inspect", env={"LB_LIFECYCLE_DESCRIPTOR": str(path)})
    assert "Version: 0.20.0" in out.stdout


def test_a_bad_descriptor_is_refused_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "lifecycle.toml"
    path.write_text(
        '[apis.buildpack]\nsupported = ["1.2"]\ndeprecated = ["1.2"]\n'
        '[apis.platform]\nsupported = ["0.4"]\n[lifecycle]\nversion = "0.9.0"\n'
    )
    for args in (("inspect",), ("check", "--platform-api", "0.4")):
        out = run(*args, "--descriptor", str(path))
        assert out.returncode == 2
        assert str(path) in out.stderr
        assert "apis.buildpack.deprecated: '1.2'" in out.stderr


@pytest.mark.parametrize(
    ("args", "env", "code", "stderr"),
    [
        (["--platform-api", "1.3", "--buildpack-api", "2.1"], {}, 0, []),
        (["--buildpack-api", "2.0"], {}, 0, []),  # the newest platform API
        (["--platform-api", "0.3", "--buildpack-api", "2.1"], {}, 11, ["ERROR: platform API 0.3"]),
        (["--platform-api", "1.3", "--buildpack-api", "3.0"], {}, 12, ["ERROR: buildpack API 3.0"]),
        (["--platform-api", "nope"], {}, 11, ["not an API version"]),
        (
            ["--platform-api", "0.4", "--buildpack-api", "1.1"],
            {},
            0,
            ["Warning: platform API 0.4 is deprecated", "Warning: buildpack API 1.1 is deprecated"],
        ),
        (
            ["--platform-api", "0.4", "--buildpack-api", "1.1"],
            {"CNB_PLATFORM_DEPRECATION_MODE": "silent", "CNB_BUILDPACK_DEPRECATION_MODE": "warn"},
            0,
            ["Warning: buildpack API 1.1 is deprecated"],
        ),
        (
            ["--platform-api", "0.4", "--buildpack-api", "1.1"],
            {"CNB_DEPRECATION_MODE": "quiet"},
            0,
            [],
        ),
        (
            ["--platform-api", "0.4", "--buildpack-api", "2.1"],
            {"CNB_PLATFORM_DEPRECATION_MODE": "error"},
            11,
            ["ERROR: platform API 0.4 is deprecated"],
        ),
        (
            ["--platform-api", "1.3", "--buildpack-api", "1.2"],
            {"CNB_BUILDPACK_DEPRECATION_MODE": "error"},
            12,
            ["ERROR: buildpack API 1.2 is deprecated"],
        ),
        (["--buildpack-api", "2.1"], {"CNB_PLATFORM_API": "0.2"}, 11, ["platform API 0.2"]),
    ],
)
def test_check(
    args: list[str], env: dict[str, str], code: int, stderr: list[str], tmp_path: Path
) -> None:
    seed = tmp_path / "lifecycle.toml"  # document 002's example: it deprecates APIs
    seed.write_text(SEED)
    out = run("check", *args, env={"LB_LIFECYCLE_DESCRIPTOR": str(seed), **env})
    assert out.returncode == code, (out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == len(stderr), out.stderr
    for line, expected in zip(lines, stderr, strict=True):
        assert expected in line
    if code == 0:
        assert "supported by lifecycle 0.9.0" in out.stdout


@pytest.mark.parametrize(
    ("env", "stderr"),
    [
        ({"LB_LIFECYCLE_DESCRIPTOR": "/nonexistent/lifecycle.toml"}, "/nonexistent/lifecycle.toml"),
        ({"CNB_PLATFORM_API": "0.2"}, "lifecycle.platform_api: platform API 0.2 is not supported"),
    ],
)
def test_servers_refuse_to_start_on_a_bad_descriptor_or_platform_api(
    env: dict[str, str], stderr: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CNB_", "LB_"))}
    out = subprocess.run(
        [str(SCRIPT), "api", "--etcd", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert stderr in out.stderr
