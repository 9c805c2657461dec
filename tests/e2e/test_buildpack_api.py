"""Buildpacks written to the Cloud Native Buildpacks spec, as shell scripts, staged on Docker.

Each buildpack here is what someone else would write for buildpack API 0.7, 0.10, 0.11 or 0.12:
its ``bin/detect`` and ``bin/build`` print the arguments and ``CNB_*`` variables they were given
(the staging log holds them), write a build plan, a launch layer with a ``bin/`` and an ``env/``
and a cache-only layer, and a ``launch.toml`` in their API's form. The droplet image is started
and asked over HTTP what its environment says; the cache-only layer must not be in it.
"""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import pytest

from lastbackend.lifecycle import stacks
from lastbackend.lifecycle.buildpacks import discover
from lastbackend.lifecycle.staging import StagingError
from lastbackend.runtime.base import ContainerSpec
from lastbackend.runtime.docker import DockerRuntime
from tests.e2e.test_staging_engine import Stager, fetch, tar_of
from tests.support import eventually

SEEN = (
    "CNB_BUILDPACK_DIR CNB_PLATFORM_DIR CNB_BUILD_PLAN_PATH CNB_BP_PLAN_PATH CNB_LAYERS_DIR "
    "CNB_TARGET_OS CNB_TARGET_ARCH CNB_TARGET_DISTRO_NAME CNB_EXEC_ENV GREETING"
)

DETECT = """#!/bin/sh
echo "seen detect argc=$# 1=$1 2=$2 pwd=$(pwd)"
for v in %(seen)s; do eval "echo \\"seen detect $v=\\${$v-unset}\\""; done
[ -f app.txt ] || exit 100
cat > "$2" <<'TOML'
[[provides]]
name = "greeting"
[[requires]]
name = "greeting"
[requires.metadata]
loud = true
TOML
exit 0
"""

BUILD = """#!/bin/sh
set -eu
echo "seen build argc=$# 1=$1 2=$2 3=$3 pwd=$(pwd)"
for v in %(seen)s; do eval "echo \\"seen build $v=\\${$v-unset}\\""; done
sed 's/^/seen plan| /' "$3"
layers=$1
mkdir -p "$layers/runtime/bin" "$layers/runtime/env" "$layers/cache"
cat > "$layers/runtime/bin/hello-www" <<'SH'
#!/bin/sh
mkdir -p /tmp/www
echo "from-layer=$FROM_LAYER api=%(api)s" > /tmp/www/index.html
exec httpd -f -p "${PORT:-8080}" -h /tmp/www
SH
chmod +x "$layers/runtime/bin/hello-www"
printf 'yes' > "$layers/runtime/env/FROM_LAYER"
printf '[types]\\nlaunch = true\\n' > "$layers/runtime.toml"
echo downloaded > "$layers/cache/blob"
printf '[types]\\ncache = true\\n' > "$layers/cache.toml"
cat > "$layers/launch.toml" <<'TOML'
%(launch)s
TOML
"""

LAUNCH_STRING = '[[processes]]\ntype = "web"\ncommand = "hello-www"\n'
LAUNCH_ARRAY = '[[processes]]\ntype = "web"\ncommand = ["hello-www"]\ndefault = true\n'


def write_buildpack(root: Path, id: str, api: str, extra: str = "") -> Path:
    directory = root / id
    (directory / "bin").mkdir(parents=True)
    (directory / "buildpack.toml").write_text(
        f'api = "{api}"\n[buildpack]\nid = "{id}"\nversion = "1.0.0"\nname = "{id}"\n{extra}'
    )
    launch = LAUNCH_STRING if api in ("0.7", "0.8") else LAUNCH_ARRAY
    values = {"seen": SEEN, "api": api, "launch": launch}
    (directory / "bin" / "detect").write_text(DETECT % values)
    (directory / "bin" / "build").write_text(BUILD % values)
    return directory


def seen(lines: list[str], phase: str) -> dict[str, str]:
    """What the buildpack printed about itself in ``phase``: ``name -> value``."""
    found = {}
    for line in lines:
        if line.startswith(f"seen {phase} ") and "=" in line:
            name, _, value = line.removeprefix(f"seen {phase} ").partition("=")
            found[name] = value
        if line.startswith(f"seen {phase} argc="):
            found["args"] = line.removeprefix(f"seen {phase} ")
    return found


@pytest.fixture
async def stager(
    runtime: DockerRuntime, busybox_stack: str, labels: dict[str, str]
) -> AsyncIterator[Stager]:
    made = Stager(runtime, labels)
    try:
        yield made
    finally:
        await made.clean_up()


async def image_has(runtime: DockerRuntime, image: str, path: str, labels: dict[str, str]) -> bool:
    name = f"lb-test-{uuid.uuid4().hex[:12]}"
    await runtime.create(ContainerSpec(name=name, image=image, labels=labels))
    try:
        return await runtime.get_archive(name, path) is not None
    finally:
        await runtime.remove(name)


APP = tar_of({"app.txt": b"hello"})


@pytest.mark.docker
async def test_a_0_7_buildpack_gets_arguments_and_only_cnb_buildpack_dir(
    stager: Stager, tmp_path: Path, labels: dict[str, str]
) -> None:
    write_buildpack(tmp_path, "legacy", "0.7")
    result = await stager.buildpack(APP, buildpacks=discover(tmp_path), env={"GREETING": "hi"})
    assert result.buildpack == "legacy"
    detect, build = seen(stager.lines, "detect"), seen(stager.lines, "build")
    assert detect["args"] == "argc=2 1=/platform 2=/tmp/lb-plan-legacy.toml pwd=/workspace"
    assert build["args"] == (
        "argc=3 1=/layers/legacy 2=/platform 3=/tmp/lb-bp-plan-legacy.toml pwd=/workspace"
    )
    for phase in (detect, build):
        assert phase["CNB_BUILDPACK_DIR"] == "/cnb/buildpacks/legacy"
        assert phase["GREETING"] == "hi"  # the user's variables, clear-env being false
        for name in ("CNB_PLATFORM_DIR", "CNB_LAYERS_DIR", "CNB_TARGET_OS", "CNB_EXEC_ENV"):
            assert phase[name] == "unset", name
    plan = "\n".join(line[len("seen plan| ") :] for line in stager.lines if "seen plan| " in line)
    assert tomllib.loads(plan) == {"entries": [{"name": "greeting", "metadata": {"loud": True}}]}
    # a shell command (API < 0.9), found on PATH through the launch layer's bin/
    assert result.process_types == {"web": "hello-www"}
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/")) == (200, b"from-layer=yes api=0.7\n")
    assert await image_has(stager.runtime, result.image, "/layers/legacy/runtime/bin", labels)
    assert not await image_has(stager.runtime, result.image, "/layers/legacy/cache", labels)
    assert "       layer cache: cache" in stager.lines


@pytest.mark.docker
async def test_a_0_10_buildpack_gets_the_path_variables_and_the_target(
    stager: Stager, tmp_path: Path, labels: dict[str, str]
) -> None:
    write_buildpack(tmp_path, "modern", "0.10")
    result = await stager.buildpack(APP, buildpacks=discover(tmp_path))
    detect, build = seen(stager.lines, "detect"), seen(stager.lines, "build")
    assert detect["CNB_PLATFORM_DIR"] == build["CNB_PLATFORM_DIR"] == "/platform"
    assert detect["CNB_BUILD_PLAN_PATH"] == "/tmp/lb-plan-modern.toml"
    assert detect["CNB_BP_PLAN_PATH"] == "unset"
    assert build["CNB_BP_PLAN_PATH"] == "/tmp/lb-bp-plan-modern.toml"
    assert build["CNB_LAYERS_DIR"] == "/layers/modern"
    assert detect["CNB_TARGET_OS"] == build["CNB_TARGET_OS"] == "linux"
    assert build["CNB_TARGET_ARCH"] == stacks.host_arch()
    assert build["CNB_TARGET_DISTRO_NAME"] == "unset"  # busybox has no distribution
    assert build["CNB_EXEC_ENV"] == "unset"
    assert result.process_types == {"web": "hello-www"}  # an argv, run directly
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/")) == (200, b"from-layer=yes api=0.10\n")
    assert not await image_has(stager.runtime, result.image, "/layers/modern/cache", labels)


@pytest.mark.docker
async def test_0_11_and_0_12_buildpacks_with_targets_run_where_their_targets_match(
    stager: Stager, tmp_path: Path
) -> None:
    arch = stacks.host_arch()
    other = "s390x" if arch != "s390x" else "amd64"
    write_buildpack(
        tmp_path, "a-elsewhere", "0.12", f'[[targets]]\nos = "linux"\narch = "{other}"\n'
    )
    write_buildpack(
        tmp_path,
        "b-here",
        "0.12",
        f'[[targets]]\nos = "linux"\narch = "{arch}"\n[[targets.distros]]\nname = "debian"\n',
    )
    write_buildpack(tmp_path, "c-eleven", "0.11", '[[targets]]\nos = "linux"\n')
    result = await stager.buildpack(APP, buildpacks=discover(tmp_path))
    assert result.buildpack == "b-here"
    assert any(
        line.startswith("       a-elsewhere: skip (its targets (linux/") for line in stager.lines
    )
    assert seen(stager.lines, "build")["CNB_EXEC_ENV"] == "production"
    base = await stager.serve(result.image)
    assert await eventually(lambda: fetch(f"{base}/")) == (200, b"from-layer=yes api=0.12\n")

    eleven = await stager.buildpack(APP, buildpacks=discover(tmp_path), requested="c-eleven")
    assert eleven.buildpack == "c-eleven"
    assert stager.lines.count("seen build CNB_EXEC_ENV=unset") == 1  # 0.11 has no exec env


@pytest.mark.docker
@pytest.mark.parametrize("api", ["0.6", "0.13", "2.1"])
async def test_a_buildpack_api_outside_0_7_to_0_12_fails_with_12_listing_them(
    stager: Stager, tmp_path: Path, docker_api: docker.APIClient, api: str
) -> None:
    write_buildpack(tmp_path, "outside", api)
    with pytest.raises(StagingError) as failed:
        await stager.buildpack(APP, buildpacks=discover(tmp_path))
    assert failed.value.exit_code == 12
    assert f"buildpack API {api} is not supported by lifecycle" in str(failed.value)
    assert "(supported: 0.7, 0.8, 0.9, 0.10, 0.11, 0.12)" in str(failed.value)
    assert not any(line.startswith("seen build") for line in stager.lines)
