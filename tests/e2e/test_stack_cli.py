"""``lastbackend stack build`` and ``stack inspect`` as a user runs them: the console script.

Through the command line only (the CLI's internals are not this test's business). The debian
stack is built into the second engine of the e2e fixtures, so the shared engine's debian images,
which other tests stage on, are never replaced under them; that engine's data is removed with
it at the end of the session. This is the slow one: mmdebstrap runs twice (a few minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import docker
import pytest

from lastbackend.lifecycle import stacks
from tests.e2e.harness import console_script

pytestmark = pytest.mark.docker


def lastbackend(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
    return subprocess.run(
        [console_script(), *argv], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_stack_build_debian_builds_labelled_images_that_inspect_then_shows(
    second_dockerd: str, second_engine: docker.APIClient
) -> None:
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (scripts/bootstrap.sh installs it)")
    before = lastbackend(
        "stack", "inspect", "--name", "debian", "--docker", second_dockerd, timeout=60
    )
    assert before.returncode == 1, before
    assert "Run image: lastbackend/stack-run:debian (missing)" in before.stdout

    started = time.monotonic()
    built = lastbackend(
        "stack", "build", "--name", "debian", "--docker", second_dockerd, timeout=1200
    )
    took = time.monotonic() - started
    assert built.returncode == 0, built.stdout + built.stderr
    assert "Built in " in built.stdout
    assert "       run image: " in built.stdout  # each image's size and time, as it goes
    assert "       build image: " in built.stdout
    assert "Stack: debian" in built.stdout
    assert "io.buildpacks.stack.id=debian" in built.stdout
    assert "io.buildpacks.base.distro.name=debian" in built.stdout

    after = lastbackend(
        "stack", "inspect", "--name", "debian", "--docker", second_dockerd, timeout=60
    )
    assert after.returncode == 0, after
    assert "Supported: 0.7, 0.8, 0.9, 0.10, 0.11, 0.12" in after.stdout
    sizes = {}
    for ref in (stacks.build_image("debian"), stacks.run_image("debian")):
        info = second_engine.inspect_image(ref)
        assert info["Config"]["Labels"]["io.buildpacks.stack.id"] == "debian"
        assert f"{ref} ({info['Id']})" in after.stdout
        sizes[ref] = info["Size"]
    # the run image is the smaller: no compilers, no pip, no npm
    assert sizes[stacks.run_image("debian")] < sizes[stacks.build_image("debian")]
    print(
        f"\nstack build --name debian: {took:.0f}s; "
        + ", ".join(f"{ref} {size / 1e6:.0f} MB" for ref, size in sizes.items())
    )


def test_stack_build_names_what_is_wrong(second_dockerd: str) -> None:
    missing = lastbackend(
        "stack", "build", "--name", "busybox", "--busybox", "/nonexistent/busybox",
        "--docker", second_dockerd, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2, missing
    assert missing.stderr.startswith("lastbackend: ")
    assert "/nonexistent/busybox" in missing.stderr
