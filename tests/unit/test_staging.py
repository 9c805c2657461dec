"""The staging engine's decisions, on the fake runtime: what is detected, built, exported, refused.

The fake runs nothing, so :class:`Lifecycle` plays the detector and builder scripts from per-test
behaviours (each buildpack's detect exit code, the ``launch.toml`` it writes, its build exit
code), and checks what the engine put in each container; the real scripts run on Docker in
``tests/e2e/test_staging_engine.py``. The stacks are imported into the fake from the real rootfs
builder with a stand-in binary.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import tomllib
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import pytest

from lastbackend.lifecycle import descriptor as lifecycle
from lastbackend.lifecycle import stacks, staging
from lastbackend.lifecycle.buildpacks import Buildpack, discover
from lastbackend.lifecycle.descriptor import Descriptor
from lastbackend.lifecycle.staging import (
    DETECT_RESULT,
    BuildpackResult,
    StagingError,
    droplet_image,
    parse_launch,
    parse_procfile,
    stage_buildpack,
    stage_docker,
)
from lastbackend.runtime.base import ContainerSpec, ImageConfig, RegistryAuth
from tests.fakeruntime import FakeProcess, FakeRuntime

DROPLET = "0b9f8a52-5f4e-4f0c-9d4c-6f2f7c1f0a11"
TARGET = f"lastbackend-droplets/app1:{DROPLET}"
STATIC_WEB = 'httpd -f -p "${PORT:-8080}" -h /workspace'
DESCRIPTOR = lifecycle.loads(
    """
[apis]
[apis.buildpack]
  deprecated = ["0.7"]
  supported = ["0.7", "0.8", "0.9", "0.10", "0.11", "0.12"]
[apis.platform]
  deprecated = ["0.4"]
  supported = ["0.4", "0.5", "1.3"]
[lifecycle]
  version = "0.9.0"
"""
)
"""The engine's buildpack APIs, 0.7 deprecated, and platform APIs to judge."""
SEED = lifecycle.loads(
    """
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
)
"""Document 002's example descriptor, for the labels it makes."""


@attrs.define
class Lifecycle:
    """Plays ``/cnb/lifecycle/detector`` and ``builder`` in the fake's containers."""

    detect: dict[str, int | Callable[[FakeProcess], int]] = attrs.Factory(dict)
    """Buildpack dir -> bin/detect's exit code, or a function of the container (100: absent)."""
    launch: dict[str, str] = attrs.Factory(dict)
    """Buildpack dir -> the launch.toml its build writes."""
    build_exit: dict[str, int] = attrs.Factory(dict)
    said: dict[str, str] = attrs.Factory(dict)
    """Buildpack dir -> what its bin/detect prints before it fails (the real detector keeps the
    last line for the error)."""
    build_output: dict[str, list[str]] = attrs.Factory(dict)
    """Buildpack dir -> the lines its bin/build prints."""
    plans: dict[str, str] = attrs.Factory(dict)
    """Buildpack dir -> the build plan its detect writes."""
    layer_files: dict[str, dict[str, bytes]] = attrs.Factory(dict)
    """Buildpack dir -> files its build writes under its layers dir."""
    bp_plans: dict[str, bytes | None] = attrs.Factory(dict)
    """Buildpack dir -> the Buildpack Plan its build was given."""
    restored: list[bytes | None] = attrs.Factory(list)
    """What each build found of a cache layer's file, restored from the previous staging."""
    tried: list[str] = attrs.Factory(list)
    built: list[str] = attrs.Factory(list)
    envs: list[dict[str, str]] = attrs.Factory(list)

    def __call__(self, process: FakeProcess) -> int | None:
        argv = shlex.split(process.spec.command)
        if not argv or not argv[0].startswith(staging.LIFECYCLE_DIR):
            return None
        assert process.spec.labels[staging.STAGING_LABEL] == DROPLET
        assert process.exists(argv[0])  # the engine copied the script in
        self.envs.append(process.env)
        if argv[0].endswith("/detector"):
            return self.detector(process, argv[1:])
        return self.builder(process, argv[1])

    def detector(self, process: FakeProcess, dirs: list[str]) -> int:
        result = b""
        for bp in dirs:
            assert process.read(f"/cnb/buildpacks/{bp}/bin/detect") is not None
            self.tried.append(bp)
            rule = self.detect.get(bp, 100)
            code = rule if isinstance(rule, int) else rule(process)
            if bp in self.plans:
                process.write(f"/tmp/lb-plan-{bp}.toml", self.plans[bp].encode())
            if code == 0:
                process.print(f"       {bp}: pass")
                process.write(DETECT_RESULT, result + f"pass {bp}\n".encode())
                return 0
            if code != 100:
                process.write(DETECT_RESULT, result + f"error {bp} {code}\n".encode())
                return 1
            if bp in self.said:
                process.print(self.said[bp])
            process.print(f"       {bp}: skip")
            result += f"skip {bp} {self.said.get(bp, '')}\n".encode()
        process.write(DETECT_RESULT, result + b"none\n")
        return 100

    def builder(self, process: FakeProcess, bp: str) -> int:
        self.built.append(bp)
        assert process.listdir("/cnb/buildpacks") == [bp]  # only the chosen one
        process.print(f"building with {bp}")
        for line in self.build_output.get(bp, []):
            process.print(line)
        if bp in self.launch:
            process.write(f"/layers/{bp}/launch.toml", self.launch[bp].encode(), uid=1000)
        self.restored.append(process.read(f"/layers/{bp}/cache/blob"))
        for path, data in self.layer_files.get(bp, {}).items():
            process.write(f"/layers/{bp}/{path}", data, uid=1000)
        self.bp_plans[bp] = process.read(f"/tmp/lb-bp-plan-{bp}.toml")
        process.write("/workspace/built.txt", b"by the build", uid=1000)
        return self.build_exit.get(bp, 0)


def app_tar(files: Mapping[str, bytes], *, compression: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


STATIC_APP = app_tar({"index.html": b"<h1>hi</h1>", "css/site.css": b"body{}"})
PROCFILE_APP = app_tar({"Procfile": b"web: ./serve --port $PORT\nworker: ./work\n"})


@pytest.fixture
async def rt() -> FakeRuntime:
    runtime = FakeRuntime()
    rootfs = stacks.rootfs_tar(b"stand-in busybox", ["sh", "httpd"])
    await stacks.import_stack(runtime, "busybox", DESCRIPTOR, rootfs)
    return runtime


def has(*names: str) -> Callable[[FakeProcess], int]:
    """The built-in buildpacks' rule: pass when the app root holds one of ``names``."""

    def detect(process: FakeProcess) -> int:
        return 0 if any(process.exists(f"/workspace/{name}") for name in names) else 100

    return detect


@pytest.fixture
def scripts(rt: FakeRuntime) -> Lifecycle:
    played = Lifecycle(
        detect={"procfile": has("Procfile"), "static": has("index.html", "Staticfile")},
        launch={
            "static": '[[processes]]\ntype = "web"\n'
            f'command = ["/bin/sh", "-c", \'{STATIC_WEB}\']\n'
        },
    )
    rt.on_start(played)
    return played


def buildpack(tmp_path: Path, id: str, api: str, extra: str = "") -> Buildpack:
    """An extra buildpack directory (its scripts are played by :class:`Lifecycle`)."""
    root = tmp_path / id.replace("/", "_")
    (root / "bin").mkdir(parents=True)
    (root / "buildpack.toml").write_text(
        f'api = "{api}"\n[buildpack]\nid = "{id}"\nversion = "1.0.0"\nname = "{id}"\n' + extra
    )
    for name in ("detect", "build"):
        (root / "bin" / name).write_text("#!/bin/sh\nexit 0\n")
    return discover(tmp_path)[0]


async def stage(
    rt: FakeRuntime,
    archive: bytes = STATIC_APP,
    *,
    lines: list[str] | None = None,
    buildpacks: list[Buildpack] | None = None,
    descriptor: Descriptor = DESCRIPTOR,
    **kwargs: object,
) -> BuildpackResult:
    arguments: dict[str, object] = {
        "droplet": DROPLET,
        "app": "app1",
        "buildpacks": discover() if buildpacks is None else buildpacks,
        "descriptor": descriptor,
        "target": TARGET,
        "log": (lines if lines is not None else []).append,
        **kwargs,
    }
    return await stage_buildpack(rt, archive, **arguments)  # type: ignore[arg-type]


async def no_containers_left(rt: FakeRuntime) -> bool:
    return await rt.list({}) == []


# -- detection ----------------------------------------------------------------------------------


async def test_static_site_is_detected_built_and_exported(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    lines: list[str] = []
    result = await stage(rt, lines=lines, env={"cloud": "foundry"})
    assert scripts.tried == ["python", "node", "procfile", "static"]  # the documented order
    assert scripts.built == ["static"]
    assert result.buildpack == "static"
    assert result.buildpack_version == "0.2.0"
    assert result.stack == "busybox"
    assert result.process_types == {"web": STATIC_WEB}
    assert result.start_command == STATIC_WEB
    assert result.ports == ("8080/TCP",)
    assert (result.image, result.target, result.digest) == (TARGET, TARGET, None)  # no registry
    assert rt.pushes == []
    assert lines[0] == "-----> Detecting (platform API 1.3, stack busybox)"
    assert "       procfile: skip" in lines
    assert "-----> Building with static 0.2.0 (buildpack API 0.10)" in lines
    assert "building with static" in lines  # the container's output, line by line
    assert f"-----> Exporting {TARGET}" in lines
    # the droplet's env reaches detect and build, beside the CNB variables
    assert scripts.envs[0]["cloud"] == "foundry"
    assert scripts.envs[0]["CNB_PLATFORM_API"] == "1.3"
    assert scripts.envs[0]["CNB_STACK_ID"] == "busybox"
    assert await no_containers_left(rt)


async def test_the_droplet_image_runs_the_web_process_with_its_labels(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    await stage(rt, env={"SECRET": "kept out of the image"})
    info = await rt.inspect_image(TARGET)
    assert info is not None
    assert info.cmd == ("/bin/sh", "-c", STATIC_WEB)
    assert info.env["PORT"] == "8080"
    assert "SECRET" not in info.env
    assert (info.exposed_ports, info.workdir, info.user) == (("8080/TCP",), "/workspace", "lb")
    assert json.loads(info.labels[staging.LABEL_PROCESS_TYPES]) == {"web": STATIC_WEB}
    assert info.labels["io.buildpacks.stack.id"] == "busybox"
    assert info.labels[lifecycle.LABEL_VERSION] == "0.9.0"
    assert json.loads(info.labels[lifecycle.LABEL_APIS]) == lifecycle.apis_label(DESCRIPTOR)
    metadata = json.loads(info.labels[staging.LABEL_BUILD_METADATA])
    assert metadata["buildpacks"] == [{"id": "static", "version": "0.2.0", "api": "0.10"}]
    assert metadata["processes"] == [{"type": "web", "command": STATIC_WEB, "default": True}]
    # no label of the staging containers: app containers inherit image labels, and cleanup
    # selects containers by io.lastbackend.staging
    assert staging.STAGING_LABEL not in info.labels
    files = rt.image_files(TARGET)
    assert files["/workspace/index.html"] == b"<h1>hi</h1>"
    assert files["/workspace/built.txt"] == b"by the build"  # the workspace after the build
    assert "/layers/static/launch.toml" in files
    assert "/bin/busybox" in files  # on the run image


async def test_the_first_buildpack_to_pass_wins(rt: FakeRuntime, scripts: Lifecycle) -> None:
    scripts.detect["procfile"] = 0
    scripts.launch["procfile"] = '[[processes]]\ntype = "web"\ncommand = ["./serve"]\n'
    result = await stage(rt, PROCFILE_APP)
    assert scripts.tried == ["python", "node", "procfile"]
    assert result.buildpack == "procfile"


async def test_a_requested_buildpack_is_the_only_one_tried(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.detect["procfile"] = 0
    result = await stage(rt, requested="static")
    assert scripts.tried == ["static"]
    assert result.buildpack == "static"


async def test_a_requested_buildpack_that_does_not_detect_fails(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    with pytest.raises(StagingError) as failed:
        await stage(rt, PROCFILE_APP, requested="static")
    assert str(failed.value) == (
        "no buildpack detected the app (tried: static). "
        "What each looked for: static: index.html or a Staticfile."
    )
    assert failed.value.exit_code == staging.EXIT_DETECT_NONE
    assert scripts.built == []
    assert await no_containers_left(rt)


async def test_an_unknown_requested_buildpack_lists_the_available_ones(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    with pytest.raises(
        StagingError, match=r"unknown buildpack 'ruby' \(available: python, node, procfile, st"
    ):
        await stage(rt, requested="ruby")
    assert scripts.tried == []


async def test_nothing_detected_names_what_was_tried_and_what_to_add(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    with pytest.raises(StagingError) as failed:
        await stage(rt, app_tar({"README": b"nothing to run"}))
    message = str(failed.value)
    assert message.startswith(
        "no buildpack detected the app (tried: python, node, procfile, static)"
    )
    assert "Procfile" in message
    assert "index.html" in message
    assert failed.value.exit_code == 20


async def test_a_detect_error_is_not_a_skip(rt: FakeRuntime, scripts: Lifecycle) -> None:
    scripts.detect["procfile"] = 3
    with pytest.raises(StagingError) as failed:
        await stage(rt)
    assert "buildpack procfile failed to detect: its bin/detect exited 3" in str(failed.value)
    assert failed.value.exit_code == staging.EXIT_DETECT_ERROR
    assert scripts.tried == ["python", "node", "procfile"]  # static never ran


async def test_extra_buildpacks_are_detected_first(
    rt: FakeRuntime, scripts: Lifecycle, tmp_path: Path
) -> None:
    extra = buildpack(tmp_path, "acme/ruby", "0.10")
    scripts.detect["acme_ruby"] = 0
    scripts.launch["acme_ruby"] = '[[processes]]\ntype = "web"\ncommand = ["ruby", "app.rb"]\n'
    result = await stage(rt, buildpacks=[*discover(tmp_path)])
    assert extra.dirname == "acme_ruby"
    assert scripts.tried == ["acme_ruby"]
    assert result.buildpack == "acme/ruby"


async def test_each_buildpack_gets_its_apis_variables_and_the_users_as_files(
    rt: FakeRuntime, scripts: Lifecycle, tmp_path: Path
) -> None:
    seen: dict[str, bytes | None] = {}

    def look(process: FakeProcess) -> int:
        for name in ("old.detect", "static.detect"):
            seen[name] = process.read(f"/cnb/lifecycle/env/{name}")
        seen["platform"] = process.read("/platform/env/GREETING")
        return 100

    old = buildpack(tmp_path, "old", "0.7", "[buildpack.x]\n")
    scripts.detect["old"] = look
    await stage(rt, buildpacks=[old, *discover()], env={"GREETING": "hi"})
    assert seen["old.detect"] == b"export CNB_BUILDPACK_DIR=/cnb/buildpacks/old\n"
    static = (seen["static.detect"] or b"").decode()
    assert "export CNB_PLATFORM_DIR=/platform\n" in static
    assert "export CNB_BUILD_PLAN_PATH=/tmp/lb-plan-static.toml\n" in static
    assert "export CNB_TARGET_OS=linux\n" in static  # 0.10: the target
    assert "CNB_EXEC_ENV" not in static
    assert seen["platform"] == b"hi"
    assert "CNB_PLATFORM_DIR" not in scripts.envs[0]  # not for every API: 0.7 has none


async def test_a_clear_env_buildpack_has_the_users_variables_unset(
    rt: FakeRuntime, scripts: Lifecycle, tmp_path: Path
) -> None:
    clean = buildpack(tmp_path, "clean", "0.10", "")
    toml = clean.path / "buildpack.toml"
    toml.write_text(toml.read_text().replace('name = "clean"', 'name = "clean"\nclear-env = true'))
    seen: list[bytes | None] = []
    scripts.detect["clean"] = lambda p: (
        seen.append(p.read("/cnb/lifecycle/env/clean.detect")) or 100
    )
    with pytest.raises(StagingError):
        await stage(rt, buildpacks=discover(tmp_path)[:1], env={"TOKEN": "x"})
    assert (seen[0] or b"").startswith(b"unset TOKEN\n")


async def test_a_buildpack_whose_targets_exclude_the_stack_is_not_run(
    rt: FakeRuntime, scripts: Lifecycle, tmp_path: Path
) -> None:
    buildpack(tmp_path, "mainframe", "0.10", '[[targets]]\nos = "linux"\narch = "s390x"\n')
    buildpack(tmp_path, "oldstack", "0.9", '[[stacks]]\nid = "io.buildpacks.stacks.bionic"\n')
    lines: list[str] = []
    with pytest.raises(StagingError) as failed:
        await stage(rt, app_tar({"x": b""}), buildpacks=discover(tmp_path)[:2], lines=lines)
    assert scripts.tried == []
    assert "do not include linux/" in str(failed.value)
    assert "its stacks (io.buildpacks.stacks.bionic) do not include busybox" in str(failed.value)
    assert failed.value.exit_code == 20


async def test_a_pass_with_an_unsatisfied_plan_is_a_skip_and_the_plan_reaches_build(
    rt: FakeRuntime, scripts: Lifecycle, tmp_path: Path
) -> None:
    buildpack(tmp_path, "needy", "0.10")
    buildpack(tmp_path, "whole", "0.10")
    needy, whole = discover(tmp_path)[:2]
    scripts.detect.update(needy=0, whole=0)
    scripts.plans["needy"] = '[[requires]]\nname = "node"\n'
    scripts.plans["whole"] = (
        '[[provides]]\nname = "py"\n[[requires]]\nname = "py"\n'
        '[requires.metadata]\nversion = "3.11"\n'
    )
    scripts.launch["whole"] = '[[processes]]\ntype = "web"\ncommand = ["serve"]\n'
    lines: list[str] = []
    result = await stage(rt, buildpacks=[needy, whole], lines=lines)
    assert result.buildpack == "whole"
    assert scripts.tried == ["needy", "whole"]
    assert "       needy: skip (plan requires node, which nothing provides)" in lines
    plan = tomllib.loads((scripts.bp_plans["whole"] or b"").decode())
    assert plan == {"entries": [{"name": "py", "metadata": {"version": "3.11"}}]}


async def test_only_launch_layers_reach_the_image_with_their_environment(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.layer_files["static"] = {
        "deps.toml": b"[types]\nlaunch = true\ncache = true\n",
        "deps/bin/tool": b"#!/bin/sh\n",
        "deps/env/GREETING": b"hello",
        "deps/env.launch/PATH.append": b"/extra",
        "deps/env.launch/PATH.delim": b":",
        "cache.toml": b"[types]\ncache = true\n",
        "cache/blob": b"downloads",
        "scratch/file": b"no toml: not a layer",
    }
    lines: list[str] = []
    await stage(rt, lines=lines)
    files = rt.image_files(TARGET)
    assert files["/layers/static/deps/bin/tool"] == b"#!/bin/sh\n"
    assert "/layers/static/deps.toml" in files
    assert not [
        f for f in files if f.startswith(("/layers/static/cache", "/layers/static/scratch"))
    ]
    info = await rt.inspect_image(TARGET)
    assert info is not None
    assert info.env["GREETING"] == "hello"
    assert info.env["PATH"] == f"/layers/static/deps/bin:{stacks.PATH}:/extra"
    assert "       layer deps: launch, cache" in lines
    assert "       layer cache: cache" in lines
    metadata = json.loads(info.labels[staging.LABEL_BUILD_METADATA])
    assert metadata["layers"] == [
        {"name": "cache", "launch": False, "cache": True},
        {"name": "deps", "launch": True, "cache": True},
    ]


async def test_cache_layers_come_back_at_the_next_staging_and_only_they(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.layer_files["static"] = {
        "cache.toml": b"[types]\ncache = true\n",
        "cache/blob": b"downloads",
        "deps.toml": b"[types]\nlaunch = true\n",
        "deps/file": b"launch only",
    }
    first = await stage(rt)
    assert first.cache is not None
    with tarfile.open(fileobj=io.BytesIO(first.cache)) as tar:
        names = set(tar.getnames())
    assert {"layers/static/cache.toml", "layers/static/cache/blob"} <= names
    assert not [n for n in names if "deps" in n or n.endswith("launch.toml")]
    assert scripts.restored == [None]
    lines: list[str] = []
    scripts.layer_files["static"] = {}  # the second build writes nothing: what it sees came back
    await stage(rt, cache=first.cache, lines=lines)
    assert scripts.restored == [None, b"downloads"]
    assert "-----> Restoring cached layers: cache" in lines
    assert (await stage(rt)).cache is None  # no cache layer made: nothing to keep


async def test_an_api_the_descriptor_lists_but_the_engine_lacks_is_exit_12(
    rt: FakeRuntime, scripts: Lifecycle, tmp_path: Path
) -> None:
    seeded = buildpack(tmp_path, "seeded", "2.1")
    with pytest.raises(StagingError) as failed:
        await stage(rt, buildpacks=[seeded], requested="seeded", descriptor=SEED)
    assert failed.value.exit_code == 12
    assert "buildpack API 2.1 is not supported by lifecycle 0.9.0 (supported: none)" in str(
        failed.value
    )
    with pytest.raises(StagingError) as failed:
        await stage(rt, buildpacks=[buildpack(tmp_path, "far", "0.13")], requested="far")
    assert "(supported: 0.7, 0.8, 0.9, 0.10, 0.11, 0.12)" in str(failed.value)


# -- process types ------------------------------------------------------------------------------


async def test_procfile_types_are_merged_over_the_buildpacks(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.launch["static"] = (
        '[[processes]]\ntype = "web"\ncommand = ["buildpack", "web"]\n'
        '[[processes]]\ntype = "worker"\ncommand = ["bin/work", "--queue", "a b"]\n'
        'args = ["--verbose"]\n'
    )
    archive = app_tar(
        {"index.html": b"x", "Procfile": b"# comment\nweb: ./mine $PORT\nclock: tick\n"}
    )
    result = await stage(rt, archive, requested="static")
    assert result.process_types == {
        "web": "./mine $PORT",  # the Procfile wins
        "worker": "bin/work --queue 'a b' --verbose",
        "clock": "tick",
    }
    assert result.start_command == "./mine $PORT"
    info = await rt.inspect_image(TARGET)
    assert info is not None
    assert info.cmd == ("/bin/sh", "-c", "./mine $PORT")
    assert json.loads(info.labels[staging.LABEL_PROCESS_TYPES]) == result.process_types


async def test_nothing_to_start_is_a_build_failure(rt: FakeRuntime, scripts: Lifecycle) -> None:
    del scripts.launch["static"]
    with pytest.raises(StagingError) as failed:
        await stage(rt)
    assert "buildpack static declared no process types" in str(failed.value)
    assert failed.value.exit_code == staging.EXIT_BUILD
    assert await rt.inspect_image(TARGET) is None
    assert await no_containers_left(rt)


async def test_a_bad_launch_toml_is_the_buildpacks_fault(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.launch["static"] = "[[processes]]\ntype = 'web'\n"
    with pytest.raises(StagingError, match=r"static wrote a bad launch.toml: processes\[0\]"):
        await stage(rt)


async def test_a_failing_build_fails_with_its_exit_code(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.build_exit["static"] = 7
    lines: list[str] = []
    with pytest.raises(StagingError) as failed:
        await stage(rt, lines=lines)
    assert str(failed.value) == (
        "buildpack static failed to build: its bin/build exited 7; its last lines of output:\n"
        "       building with static"
    )
    assert failed.value.exit_code == 51
    assert "building with static" in lines
    assert await no_containers_left(rt)


async def test_a_failing_build_quotes_its_last_lines_without_passwords(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.build_exit["static"] = 1
    output = [f"line {n}" for n in range(20)]
    output += ["", "ERROR: proxy http://deploy:s3cret@proxy.local:3128/ refused", "   "]
    scripts.build_output["static"] = output
    lines: list[str] = []
    with pytest.raises(StagingError) as failed:
        await stage(rt, lines=lines)
    quoted = str(failed.value).split("\n")[1:]
    assert len(quoted) == staging.TAIL_LINES
    assert quoted[0] == "       line 9"  # the last twelve non-blank lines
    assert quoted[-1] == "       ERROR: proxy http://***@proxy.local:3128/ refused"
    assert "s3cret" not in str(failed.value)


async def test_nothing_detected_quotes_why_a_buildpack_did_not_pass(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    scripts.said["python"] = "       python: stack busybox has no python3 (Debian package python3)"
    with pytest.raises(StagingError) as failed:
        await stage(rt, app_tar({"requirements.txt": b"flask\n"}))
    assert str(failed.value) == (
        "no buildpack detected the app (tried: python, node, procfile, static). What each "
        "looked for: python: requirements.txt, pyproject.toml or setup.py (stack busybox has no "
        "python3 (Debian package python3)); node: package.json; procfile: a Procfile; static: "
        "index.html or a Staticfile. Add a Procfile with a line like 'web: <command>', or an "
        "index.html for a static site."
    )


def test_procfile_and_launch_parsing() -> None:
    skipped: list[str] = []
    text = "web: a: b\r\n\n# x\nbad line\n  worker :  run  \nno-command:\n"
    assert parse_procfile(text, skipped.append) == {"web": "a: b", "worker": "run"}
    assert len(skipped) == 2
    assert "line 4" in skipped[0]
    assert parse_launch("", "0.10") == {}
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_launch("[[processes]", "0.10")
    with pytest.raises(ValueError, match=r"processes\[0\].type"):
        parse_launch('[[processes]]\ntype = "a b"\ncommand = "x"\n', "0.8")
    with pytest.raises(ValueError, match=r"processes\[0\].args"):
        parse_launch('[[processes]]\ntype = "web"\ncommand = "x"\nargs = [1]\n', "0.8")


# -- the lifecycle descriptor: platform and buildpack APIs, by deprecation mode ----------------


@pytest.mark.parametrize(
    ("environ", "outcome"),
    [
        ({}, "warn"),
        ({"CNB_PLATFORM_DEPRECATION_MODE": "warn"}, "warn"),
        ({"CNB_PLATFORM_DEPRECATION_MODE": "error"}, "error"),
        ({"CNB_PLATFORM_DEPRECATION_MODE": "silent"}, "silent"),
        ({"CNB_DEPRECATION_MODE": "quiet"}, "silent"),
        ({"CNB_BUILDPACK_DEPRECATION_MODE": "error"}, "warn"),  # the other kind's variable
    ],
)
async def test_a_deprecated_platform_api_by_mode(
    rt: FakeRuntime, scripts: Lifecycle, environ: dict[str, str], outcome: str
) -> None:
    lines: list[str] = []
    if outcome == "error":
        with pytest.raises(StagingError) as failed:
            await stage(rt, lines=lines, platform_api="0.4", environ=environ)
        assert "platform API 0.4 is deprecated" in str(failed.value)
        assert str(failed.value).endswith("(CNB_PLATFORM_DEPRECATION_MODE=error) (exit 11)")
        assert failed.value.exit_code == 11
        assert scripts.tried == []  # refused before any container
        return
    result = await stage(rt, lines=lines, platform_api="0.4", environ=environ)
    assert result.buildpack == "static"
    warnings = [line for line in lines if "Warning" in line]
    if outcome == "warn":
        assert len(warnings) == 1
        assert "platform API 0.4 is deprecated by lifecycle 0.9.0" in warnings[0]
    else:
        assert warnings == []
    assert scripts.envs[0]["CNB_PLATFORM_API"] == "0.4"


async def test_an_unsupported_platform_api_is_exit_11(rt: FakeRuntime, scripts: Lifecycle) -> None:
    with pytest.raises(StagingError) as failed:
        await stage(rt, platform_api="0.3")
    assert str(failed.value).startswith("platform API 0.3 is not supported by lifecycle 0.9.0")
    assert str(failed.value).endswith("(exit 11)")
    assert failed.value.exit_code == 11
    assert scripts.tried == []


async def test_an_unsupported_buildpack_api_is_exit_12(
    rt: FakeRuntime, scripts: Lifecycle, tmp_path: Path
) -> None:
    old = buildpack(tmp_path, "old", "0.2")
    scripts.detect["old"] = 0
    # requested: refused before detection
    with pytest.raises(StagingError) as failed:
        await stage(rt, buildpacks=[old], requested="old")
    assert str(failed.value).startswith(
        "buildpack old: buildpack API 0.2 is not supported by lifecycle 0.9.0"
    )
    assert failed.value.exit_code == 12
    assert scripts.tried == []
    # detected: refused once chosen, before it builds
    with pytest.raises(StagingError) as failed:
        await stage(rt, buildpacks=[old])
    assert failed.value.exit_code == 12
    assert scripts.tried == ["old"]
    assert scripts.built == []
    assert await no_containers_left(rt)


@pytest.mark.parametrize(
    ("environ", "outcome"),
    [
        ({}, "warn"),
        ({"CNB_BUILDPACK_DEPRECATION_MODE": "error"}, "error"),
        ({"CNB_BUILDPACK_DEPRECATION_MODE": "silent"}, "silent"),
        ({"CNB_DEPRECATION_MODE": "error"}, "error"),
        ({"CNB_PLATFORM_DEPRECATION_MODE": "error"}, "warn"),
    ],
)
async def test_a_deprecated_buildpack_api_by_mode(
    rt: FakeRuntime,
    scripts: Lifecycle,
    tmp_path: Path,
    environ: dict[str, str],
    outcome: str,
) -> None:
    legacy = buildpack(tmp_path, "legacy", "0.7")
    scripts.detect["legacy"] = 0
    scripts.launch["legacy"] = '[[processes]]\ntype = "web"\ncommand = "run"\n'
    lines: list[str] = []
    if outcome == "error":
        with pytest.raises(StagingError) as failed:
            await stage(rt, buildpacks=[legacy], environ=environ, lines=lines)
        assert "buildpack legacy: buildpack API 0.7 is deprecated" in str(failed.value)
        assert failed.value.exit_code == 12
        return
    result = await stage(rt, buildpacks=[legacy], environ=environ, lines=lines)
    assert result.buildpack == "legacy"
    warnings = [line for line in lines if "Warning" in line]
    assert len(warnings) == (1 if outcome == "warn" else 0)
    if warnings:
        assert "buildpack legacy: buildpack API 0.7 is deprecated by lifecycle 0.9.0" in warnings[0]


async def test_a_bad_deprecation_mode_is_refused(rt: FakeRuntime, scripts: Lifecycle) -> None:
    with pytest.raises(StagingError, match="CNB_PLATFORM_DEPRECATION_MODE: must be warn"):
        await stage(rt, platform_api="0.4", environ={"CNB_PLATFORM_DEPRECATION_MODE": "eror"})


# -- archives, stacks, leftovers, pushes --------------------------------------------------------


async def test_a_zip_with_no_directory_entries_lands_owned_by_the_stack_user(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zipped:
        zipped.writestr("index.html", "zipped")
        zipped.writestr("assets/deep/app.js", "js")
    await stage(rt, buf.getvalue())
    await rt.create(ContainerSpec(name="probe", image=TARGET))
    tree = await rt.get_archive("probe", "/workspace")
    assert tree is not None
    with tarfile.open(fileobj=io.BytesIO(tree)) as tar:
        owners = {info.name: info.uid for info in tar}
    assert owners["workspace/assets/deep/app.js"] == stacks.UID
    assert owners["workspace/assets/deep"] == stacks.UID  # made up, and the user's to write in
    assert rt.image_files(TARGET)["/workspace/index.html"] == b"zipped"


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (app_tar({"../evil": b"x"}), "outside the app directory: ../evil"),
        (b"not an archive at all", "not a readable tar or zip"),
    ],
)
async def test_bad_archives_are_refused_before_any_container(
    rt: FakeRuntime, scripts: Lifecycle, archive: bytes, reason: str
) -> None:
    with pytest.raises(StagingError, match=reason):
        await stage(rt, archive)
    assert scripts.tried == []


async def test_a_missing_stack_says_how_to_build_it(scripts: Lifecycle) -> None:
    empty = FakeRuntime()
    with pytest.raises(StagingError, match=r"lastbackend stack build --name busybox"):
        await stage(empty)
    with pytest.raises(StagingError, match="stack jammy is not available"):
        await stage(empty, stack="jammy")


async def test_leftovers_of_an_interrupted_run_are_removed_first(
    rt: FakeRuntime, scripts: Lifecycle
) -> None:
    stale = ContainerSpec(
        name=staging.container_name(DROPLET, "build"),
        image=stacks.build_image("busybox"),
        command="sleep 600",
        labels={staging.STAGING_LABEL: DROPLET},
    )
    await rt.run(stale)
    await stage(rt)
    assert scripts.built == ["static"]  # a fresh build container, not the stale one adopted
    assert await no_containers_left(rt)
    # and cleanup alone removes what a crash left, by name and by label
    await rt.run(stale)
    await rt.create(ContainerSpec(name=staging.container_name(DROPLET, "export"), image=TARGET))
    other = await rt.run(attrs.evolve(stale, name="lb-staging-other-build", labels={}))
    await staging.cleanup(rt, DROPLET)
    await staging.cleanup(rt, DROPLET)  # idempotent
    assert [c.id for c in await rt.list({})] == [other.id]


async def test_a_registry_target_is_pushed_and_pinned(rt: FakeRuntime, scripts: Lifecycle) -> None:
    auth = RegistryAuth("lb", "p4ss-word", "registry.example:5000")
    rt.require_auth(auth)
    target = droplet_image("registry.example:5000", "app1", DROPLET)
    assert target == f"registry.example:5000/droplets/app1:{DROPLET}"
    lines: list[str] = []
    result = await stage(rt, target=target, push_auth=auth, lines=lines)
    assert rt.pushes == [(target, auth)]
    assert result.digest is not None
    assert result.image == f"registry.example:5000/droplets/app1@{result.digest}"
    assert result.target == target
    assert f"-----> Pushing {target}" in lines
    wrong = RegistryAuth("lb", "wrong-p4ss", "registry.example:5000")
    with pytest.raises(StagingError) as failed:
        await stage(rt, target=target, push_auth=wrong)
    assert "pushing the droplet image failed" in str(failed.value)
    assert "wrong-p4ss" not in str(failed.value)


def test_droplet_images_without_a_registry_stay_local() -> None:
    assert droplet_image("", "app1", "d1") == "lastbackend-droplets/app1:d1"


async def test_a_timeout_is_a_staging_error_and_cleans_up(rt: FakeRuntime) -> None:
    with pytest.raises(StagingError, match=r"did not finish within 0\.2s"):
        await stage(rt, timeout_s=0.2)  # no program: the detector "runs" forever
    assert await no_containers_left(rt)


# -- stacks -----------------------------------------------------------------------------------


def test_the_busybox_rootfs_has_the_user_and_the_contract_directories() -> None:
    with tarfile.open(fileobj=io.BytesIO(stacks.rootfs_tar(b"BB", ["sh", "httpd"]))) as tar:
        entries = {info.name: info for info in tar}
        passwd = tar.extractfile(entries["etc/passwd"]).read().decode()  # type: ignore[union-attr]
    assert "lb:x:1000:1000:lb:/workspace:/bin/sh" in passwd.splitlines()
    for directory in ("workspace", "layers"):
        assert entries[directory].isdir()
        assert entries[directory].uid == 1000
    assert entries["tmp"].mode == 0o1777
    assert entries["bin/httpd"].linkname == "busybox"
    assert entries["bin/busybox"].mode == 0o755
    assert {"cnb/buildpacks", "platform/env"} <= set(entries)


def test_only_a_static_64_bit_elf_will_do() -> None:
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    assert stacks.statically_linked(bytes(header))  # no program headers: no interpreter
    interp = bytearray(header + bytes(56))
    interp[32:40] = (64).to_bytes(8, "little")  # e_phoff
    interp[54:56] = (56).to_bytes(2, "little")  # e_phentsize
    interp[56:58] = (1).to_bytes(2, "little")  # e_phnum
    interp[64:68] = (3).to_bytes(4, "little")  # PT_INTERP
    assert not stacks.statically_linked(bytes(interp))
    assert not stacks.statically_linked(b"#!/bin/sh\n")


async def test_ensure_stack_builds_labels_and_rebuilds_for_a_new_descriptor(
    tmp_path: Path,
) -> None:
    rt = FakeRuntime()
    fake_busybox = tmp_path / "busybox"
    fake_busybox.write_bytes(b"\x7fELF\x02" + bytes(59))  # static, but not runnable here
    stack = await stacks.ensure_stack(rt, "busybox", SEED, fake_busybox)
    assert stack.present
    assert stack.build is not None
    labels = stack.build.labels
    assert labels["io.buildpacks.stack.id"] == "busybox"
    assert labels[lifecycle.LABEL_VERSION] == "0.9.0"
    assert json.loads(labels[lifecycle.LABEL_APIS]) == lifecycle.apis_label(SEED)
    builder = json.loads(labels[lifecycle.LABEL_BUILDER])
    assert builder["lifecycle"] == {
        "version": "0.9.0",
        "api": {"buildpack": "1.2", "platform": "0.4"},
    }
    assert builder["stack"]["runImage"]["image"] == "lastbackend/stack-run:busybox"
    assert stack.run is not None
    assert stack.run.labels == {"io.buildpacks.stack.id": "busybox"}
    assert (stack.build.user, stack.build.workdir) == ("lb", "/workspace")
    assert "/bin/sh" not in rt.image_files(stacks.build_image("busybox"))  # symlinks, not files

    again = await stacks.ensure_stack(rt, "busybox", SEED, fake_busybox)
    assert again.build is not None
    assert again.build.id == stack.build.id  # idempotent: nothing rebuilt

    newer = attrs.evolve(SEED, version="0.10.0")
    rebuilt = await stacks.ensure_stack(rt, "busybox", newer, fake_busybox)
    assert rebuilt.build is not None
    assert rebuilt.build.labels[lifecycle.LABEL_VERSION] == "0.10.0"

    text = stacks.describe(rebuilt)
    assert "Build image: lastbackend/stack-build:busybox (sha256:" in text
    assert "  Version: 0.10.0" in text
    assert "    Deprecated: 1\n    Supported: 1.2, 2.1" in text
    assert "  io.buildpacks.stack.id=busybox" in text


async def test_ensure_stack_refuses_what_it_cannot_build(tmp_path: Path) -> None:
    rt = FakeRuntime()
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(stacks.StackError, match="not a statically linked 64-bit busybox"):
        await stacks.ensure_stack(rt, "busybox", DESCRIPTOR, script)
    with pytest.raises(stacks.StackError, match="cannot read busybox"):
        await stacks.ensure_stack(rt, "busybox", DESCRIPTOR, tmp_path / "absent")
    with pytest.raises(stacks.StackError, match="tag its images as lastbackend/stack-build:jammy"):
        await stacks.ensure_stack(rt, "jammy", DESCRIPTOR, script)
    rt.add_image(stacks.build_image("jammy"), ImageConfig(labels={"io.buildpacks.stack.id": "j"}))
    rt.add_image(stacks.run_image("jammy"))
    assert (await stacks.ensure_stack(rt, "jammy", DESCRIPTOR, script)).present  # the admin's


# -- the docker lifecycle -----------------------------------------------------------------------

PRIVATE = "registry.example:5000/team/app:1"


@pytest.fixture
def docker_rt() -> FakeRuntime:
    rt = FakeRuntime()
    rt.add_image(
        PRIVATE,
        ImageConfig(
            entrypoint=("/bin/serve",), cmd=("--port", "8080", "--name", "a b"),
            exposed_ports=("8080/TCP", "9090/UDP"),
        ),
    )  # fmt: skip
    rt.require_auth(RegistryAuth("team", "t0p-secret", "registry.example:5000"))
    return rt


async def test_docker_staging_pulls_with_credentials_and_pins_the_digest(
    docker_rt: FakeRuntime,
) -> None:
    lines: list[str] = []
    auth = RegistryAuth("team", "t0p-secret", "")  # no login_server: the image's registry
    result = await stage_docker(docker_rt, PRIVATE, auth=auth, log=lines.append)
    assert docker_rt.pulls == [
        (PRIVATE, RegistryAuth("team", "t0p-secret", "registry.example:5000"))
    ]
    assert result.start_command == "/bin/serve --port 8080 --name 'a b'"
    assert result.image_path == PRIVATE
    assert not result.cached
    assert result.ports == ("8080/TCP", "9090/UDP")
    assert result.image.startswith("registry.example:5000/team/app@sha256:")
    assert result.digest == result.image.partition("@")[2]
    assert lines[0] == f"-----> Pulling {PRIVATE} as team"
    assert not any("t0p-secret" in line for line in lines)


async def test_docker_staging_with_wrong_or_no_credentials(docker_rt: FakeRuntime) -> None:
    wrong = RegistryAuth("team", "guessed-pw", "registry.example:5000")
    with pytest.raises(StagingError) as failed:
        await stage_docker(docker_rt, PRIVATE, auth=wrong)
    message = str(failed.value)
    assert message.startswith(
        f"cannot pull {PRIVATE}: registry.example:5000 refused the credentials"
    )
    assert "team" in message
    assert "guessed-pw" not in message
    assert failed.value.exit_code is None
    with pytest.raises(StagingError, match="requires credentials"):
        await stage_docker(docker_rt, PRIVATE)
    docker_rt.fail_pull("registry.example:5000/team/absent:1", "manifest unknown")
    with pytest.raises(StagingError, match="no such image or tag"):
        await stage_docker(docker_rt, "registry.example:5000/team/absent:1")


async def test_docker_staging_caches_into_the_platform_registry(docker_rt: FakeRuntime) -> None:
    auth = RegistryAuth("team", "t0p-secret", "registry.example:5000")
    cache = droplet_image("registry.example:5000", "app1", DROPLET)
    result = await stage_docker(
        docker_rt, PRIVATE, auth=auth, use_caching=True, cache_target=cache, push_auth=auth
    )
    assert result.cached
    assert result.image_path == cache
    assert docker_rt.pushes == [(cache, auth)]
    assert result.image == f"registry.example:5000/droplets/app1@{result.digest}"
    lines: list[str] = []
    uncached = await stage_docker(docker_rt, PRIVATE, auth=auth, use_caching=True, log=lines.append)
    assert not uncached.cached
    assert any("no platform registry is configured" in line for line in lines)
    docker_rt.fail_push(cache, "denied: t0p-secret")
    with pytest.raises(StagingError) as failed:
        await stage_docker(
            docker_rt, PRIVATE, auth=auth, use_caching=True, cache_target=cache, push_auth=auth
        )
    assert "caching" in str(failed.value)
    assert "t0p-secret" not in str(failed.value)


async def test_an_image_with_nothing_to_start_is_refused() -> None:
    rt = FakeRuntime()
    rt.add_image("local/empty:1")
    with pytest.raises(StagingError, match="neither ENTRYPOINT nor CMD"):
        await stage_docker(rt, "local/empty:1")


# -- the debian stack: what is decided before mmdebstrap runs ----------------------------------


def test_mmdebstrap_builds_a_minimal_root_from_the_machines_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("# only comments\n\n")
    (apt / "sources.list.d" / "debian.sources").write_text("Types: deb\n")
    (apt / "sources.list.d" / "old.list").write_text("deb http://x bookworm main\n")
    (apt / "sources.list.d" / "off.list.disabled").write_text("deb http://y bookworm main\n")
    sources = stacks.apt_sources(apt)
    assert sources == [
        apt / "sources.list.d" / "debian.sources",
        apt / "sources.list.d" / "old.list",
    ]
    argv = stacks.mmdebstrap_argv(
        "bookworm", stacks.DEBIAN_RUN_PACKAGES, tmp_path / "r.tar", sources
    )
    assert argv[0] == "mmdebstrap"
    assert "--include=python3,nodejs,ca-certificates,busybox" in argv
    assert argv[-4:] == ["bookworm", str(tmp_path / "r.tar"), *map(str, sources)]
    assert 'APT::Install-Recommends "false"' in " ".join(argv)
    hook = next(a for a in argv if a.startswith("--customize-hook="))
    assert 'lb:x:1000:1000:lb:/workspace:/bin/sh" >> "$1/etc/passwd"' in hook
    assert "build-essential" not in stacks.DEBIAN_RUN_PACKAGES  # no compiler to run apps on
    assert {"build-essential", "npm", "python3-pip"} <= set(stacks.DEBIAN_BUILD_PACKAGES)
    assert stacks.os_release('ID=debian\nVERSION_ID="12"\n# x\n') == {
        "ID": "debian",
        "VERSION_ID": "12",
    }


async def test_debian_is_the_default_once_built_and_built_on_first_need(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = FakeRuntime()
    assert await stacks.default_stack(rt, "") == "busybox"
    assert await stacks.default_stack(rt, "busybox") == "busybox"  # configured: kept
    built: list[str] = []

    async def build(runtime: FakeRuntime, descriptor: Descriptor, log: object) -> stacks.Stack:
        built.append("debian")
        rootfs = stacks.rootfs_tar(b"stand-in", ["sh"])
        return await stacks.import_stack(runtime, "debian", descriptor, rootfs)

    monkeypatch.setattr(stacks, "build_debian", build)
    lines: list[str] = []
    stack = await stacks.ensure_stack(rt, "debian", DESCRIPTOR, log=lines.append)
    assert stack.present
    assert lines == [
        "-----> Building stack debian (first use): python3, nodejs, ca-certificates, busybox, "
        "python3-venv, python3-pip, npm, build-essential"
    ]
    await stacks.ensure_stack(rt, "debian", DESCRIPTOR, log=lines.append)
    assert built == ["debian"]  # once
    assert await stacks.default_stack(rt, "") == "debian"


async def test_without_mmdebstrap_the_debian_stack_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stacks.shutil, "which", lambda name: None)
    with pytest.raises(stacks.StackError, match="apt-get install mmdebstrap"):
        await stacks.build_debian(FakeRuntime(), DESCRIPTOR)
