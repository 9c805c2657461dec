"""Buildpack discovery and the shipped buildpacks' scripts.

The scripts are run here with the host's busybox sh (the shell they get in the stack), so their
quoting of Procfile lines and Staticfile roots is checked against the parser staging uses; they
run in real containers in ``tests/e2e/test_staging_engine.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from lastbackend.lifecycle import contract, staging
from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle.buildpacks import (
    BUILTIN_ORDER,
    Buildpack,
    BuildpackError,
    builtin_dir,
    discover,
    find,
    load,
    view,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = lifecycle.load()
SEED = lifecycle.loads(
    '[apis.buildpack]\ndeprecated = ["1"]\nsupported = ["1.2", "2.1"]\n'
    '[apis.platform]\nsupported = ["0.4"]\n[lifecycle]\nversion = "0.9.0"\n'
)
"""Document 002's example descriptor: APIs no engine implements."""
DEPRECATING = lifecycle.loads(
    '[apis.buildpack]\ndeprecated = ["0.7"]\nsupported = ["0.7", "0.8", "0.9", "0.10"]\n'
    '[apis.platform]\nsupported = ["0.12"]\n[lifecycle]\nversion = "1.0.0"\n'
)


def write(root: Path, toml: str | None, *, bins: tuple[str, ...] = ("detect", "build")) -> Path:
    (root / "bin").mkdir(parents=True)
    if toml is not None:
        (root / "buildpack.toml").write_text(toml)
    for name in bins:
        (root / "bin" / name).write_text("#!/bin/sh\nexit 0\n")
    return root


def good(id: str, api: str = "0.10") -> str:
    return f'api = "{api}"\n[buildpack]\nid = "{id}"\nversion = "1.0.0"\nname = "{id}"\n'


def test_the_built_in_order_is_python_node_procfile_then_static() -> None:
    catalog = discover()
    assert (
        [b.id for b in catalog] == ["python", "node", "procfile", "static"] == list(BUILTIN_ORDER)
    )
    assert catalog.problems == ()
    assert all(b.builtin for b in catalog)
    assert catalog[3].path == builtin_dir() / "static"
    assert len(catalog) == 4


@pytest.mark.parametrize("buildpack", ["python", "node", "procfile", "static"])
def test_shipped_buildpacks_use_an_api_the_shipped_descriptor_supports(buildpack: str) -> None:
    found = load(builtin_dir() / buildpack, builtin=True)
    assert SHIPPED.is_supported("buildpack", found.api)
    assert not SHIPPED.is_deprecated("buildpack", found.api)  # no warning in every staging log
    for name in ("detect", "build"):
        assert (found.path / "bin" / name).stat().st_mode & 0o111  # executable in a checkout too


def test_the_package_ships_the_buildpacks() -> None:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["lastbackend.lifecycle"]
    shipped = {
        path.relative_to(builtin_dir()).as_posix()
        for path in builtin_dir().rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    covered = {
        name
        for name in shipped
        if any(Path(name).match(p.removeprefix("buildpacks/")) for p in patterns)
    }
    assert covered == shipped


def test_extras_come_first_by_directory_name(tmp_path: Path) -> None:
    write(tmp_path / "20-node", good("acme/node"))
    write(tmp_path / "10-ruby", good("acme/ruby"))
    catalog = discover(tmp_path)
    assert [b.id for b in catalog] == [
        "acme/ruby",
        "acme/node",
        "python",
        "node",
        "procfile",
        "static",
    ]
    assert not catalog[0].builtin
    assert catalog[0].dirname == "acme_ruby"
    assert find(catalog, "acme/node") == catalog[1]
    assert find(catalog, "nope") is None


def test_an_extra_with_a_built_in_id_replaces_it_and_says_so(tmp_path: Path) -> None:
    write(tmp_path / "mine", good("static"))
    catalog = discover(tmp_path)
    assert [(b.id, b.builtin) for b in catalog] == [
        ("static", False),
        ("python", True),
        ("node", True),
        ("procfile", True),
    ]
    [problem] = catalog.problems
    assert problem.file == str(builtin_dir() / "static" / "buildpack.toml")
    assert "comes first in detection order" in problem.reason


@pytest.mark.parametrize(
    ("toml", "bins", "where", "reason"),
    [
        (None, ("detect", "build"), "buildpack.toml", "missing: a buildpack directory needs"),
        ("api = ", ("detect", "build"), "buildpack.toml", "not valid TOML"),
        ('[buildpack]\nid = "x"\nversion = "1"\n', ("detect", "build"), "buildpack.toml", "api:"),
        ("api = 0.2\n" + good("x")[12:], ("detect", "build"), "buildpack.toml", "quote it"),
        ('api = "two"\n' + good("x")[12:], ("detect", "build"), "buildpack.toml", "api:"),
        ('api = "2.1"\n', ("detect", "build"), "buildpack.toml", "[buildpack]: missing"),
        (good("x").replace('id = "x"\n', ""), ("detect", "build"), "buildpack.toml", "id: missing"),
        (good("Bad Id"), ("detect", "build"), "buildpack.toml", "is not a buildpack name"),
        (good("x").replace('"1.0.0"', '""'), ("detect", "build"), "buildpack.toml", "version"),
        (good("x").replace('"1.0.0"', "1"), ("detect", "build"), "buildpack.toml", "a string"),
        (good("x") + "[[order]]\n", ("detect", "build"), "buildpack.toml", "meta-buildpacks"),
        (good("x"), ("detect",), "bin/build", "every buildpack has bin/detect and bin/build"),
    ],
)
def test_a_bad_buildpack_is_reported_with_its_file_and_skipped(
    tmp_path: Path, toml: str | None, bins: tuple[str, ...], where: str, reason: str
) -> None:
    write(tmp_path / "bad", toml, bins=bins)
    write(tmp_path / "ok", good("fine"))
    catalog = discover(tmp_path)
    assert [b.id for b in catalog] == [
        "fine",
        "python",
        "node",
        "procfile",
        "static",
    ]  # the bad one hid nothing
    [problem] = catalog.problems
    assert problem.file == str(tmp_path / "bad" / where)
    assert reason in problem.reason
    with pytest.raises(BuildpackError) as failed:
        load(tmp_path / "bad")
    assert str(failed.value) == f"{problem.file}: {problem.reason}"


def test_a_missing_extras_directory_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    catalog = discover(tmp_path / "absent")
    assert [b.id for b in catalog] == ["python", "node", "procfile", "static"]
    assert [str(p) for p in catalog.problems] == [
        f"{tmp_path / 'absent'}: staging.buildpacks_dir: not a directory"
    ]


def test_the_shipped_descriptor_declares_exactly_the_implemented_apis() -> None:
    assert SHIPPED.buildpack.expanded_supported() == list(contract.IMPLEMENTED)
    assert [str(v) for v in contract.IMPLEMENTED] == ["0.7", "0.8", "0.9", "0.10", "0.11", "0.12"]


def test_an_api_the_descriptor_lists_but_the_engine_lacks_is_unsupported(tmp_path: Path) -> None:
    write(tmp_path / "a", good("seeded", api="2.1"))
    rows = {row["id"]: row for row in view(discover(tmp_path), SEED)["buildpacks"]}
    assert SEED.is_supported("buildpack", "2.1")
    assert rows["seeded"]["api_status"] == "unsupported"


def test_the_view_lists_detection_order_api_status_and_problems(tmp_path: Path) -> None:
    write(tmp_path / "a", good("legacy", api="0.7"))
    write(tmp_path / "b", good("ancient", api="0.2"))
    write(tmp_path / "c", None)
    body = view(discover(tmp_path), DEPRECATING)
    rows = {row["id"]: row for row in body["buildpacks"]}
    assert [row["id"] for row in body["buildpacks"]] == [
        "legacy",
        "ancient",
        "python",
        "node",
        "procfile",
        "static",
    ]
    assert rows["legacy"]["api_status"] == "deprecated"
    assert rows["ancient"]["api_status"] == "unsupported"
    assert rows["static"] == {
        "id": "static",
        "version": "0.2.0",
        "name": "Static site (busybox httpd)",
        "api": "0.10",
        "api_status": "supported",
        "homepage": "",
        "builtin": True,
        "position": 6,
        "detects": "index.html or a Staticfile",
    }
    assert body["problems"] == [
        {
            "file": str(tmp_path / "c" / "buildpack.toml"),
            "reason": "missing: a buildpack directory needs a buildpack.toml",
        }
    ]


# -- the shipped scripts, run with busybox sh --------------------------------------------------


@pytest.fixture
def sh() -> list[str]:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed (Debian: busybox-static)")
    return [busybox, "sh"]


def run(sh: list[str], buildpack: Buildpack, script: str, app: Path, *args: str) -> int:
    done = subprocess.run(
        [*sh, str(buildpack.path / "bin" / script), *args],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.returncode


def test_procfile_detects_and_writes_every_line_intact(sh: list[str], tmp_path: Path) -> None:
    procfile = load(builtin_dir() / "procfile")
    app, layers = tmp_path / "app", tmp_path / "layers"
    app.mkdir()
    layers.mkdir()
    assert run(sh, procfile, "detect", app, "/platform", "/plan") == 100
    lines = {
        "web": "while true; do printf 'HTTP/1.1 200 OK\\r\\n\\r\\nok' | nc -l -p $PORT; done",
        "worker": 'echo "a \\"quoted\\" \\\\ path" && exec ./work --x=${X:-1}',
    }
    body = "".join(f"{kind}:  {command}\r\n" for kind, command in lines.items())
    (app / "Procfile").write_text("# comment\n\n" + body + "not a process line\n")
    assert run(sh, procfile, "detect", app, "/platform", "/plan") == 0
    assert run(sh, procfile, "build", app, str(layers), "/platform", "/plan") == 0
    written = staging.parse_launch((layers / "launch.toml").read_text(), procfile.api)
    assert written == lines
    assert written == staging.parse_procfile((app / "Procfile").read_text())  # the two agree

    (app / "Procfile").write_text("# nothing\n")
    assert run(sh, procfile, "build", app, str(layers), "/platform", "/plan") == 1


def test_static_serves_the_app_or_the_staticfile_root(sh: list[str], tmp_path: Path) -> None:
    static = load(builtin_dir() / "static")
    app, layers = tmp_path / "app", tmp_path / "layers"
    (app / "public").mkdir(parents=True)
    layers.mkdir()
    assert run(sh, static, "detect", app) == 100
    (app / "index.html").write_text("hi")
    assert run(sh, static, "detect", app) == 0
    assert run(sh, static, "build", app, str(layers)) == 0
    web = staging.parse_launch((layers / "launch.toml").read_text(), static.api)["web"]
    assert web.startswith('httpd -f -v -p "${PORT:-8080}" -h ' + str(app) + " &")

    (app / "index.html").unlink()
    (app / "Staticfile").write_text("root: public/\r\n")
    assert run(sh, static, "detect", app) == 0
    assert run(sh, static, "build", app, str(layers)) == 0
    web = staging.parse_launch((layers / "launch.toml").read_text(), static.api)["web"]
    assert f"-h {app}/public &" in web
    for bad in ("../etc", "/etc", "absent", "a'b"):
        (app / "Staticfile").write_text(f"root: {bad}\n")
        assert run(sh, static, "build", app, str(layers)) == 1, bad
