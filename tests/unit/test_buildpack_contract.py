"""The buildpack API contract's decisions: env by version, targets, plans, layers, processes."""

from __future__ import annotations

import tomllib

import pytest

from lastbackend.lifecycle import contract
from lastbackend.lifecycle.contract import Entry, Layer, Target, TargetSpec

DEBIAN = Target("linux", "amd64", "", "debian", "12")


def env(api: str, phase: str, target: Target | None = DEBIAN) -> dict[str, str]:
    return contract.phase_env(
        api,
        phase,
        buildpack_dir="/cnb/buildpacks/bp",
        platform_dir="/platform",
        plan_path="/tmp/plan.toml",
        layers_dir="/layers/bp",
        target=target,
    )


def test_0_7_gets_only_the_buildpack_dir_beside_its_arguments() -> None:
    assert env("0.7", "detect") == {"CNB_BUILDPACK_DIR": "/cnb/buildpacks/bp"}
    assert env("0.7", "build") == {"CNB_BUILDPACK_DIR": "/cnb/buildpacks/bp"}


def test_0_8_and_0_9_get_the_paths_that_replace_the_arguments() -> None:
    for api in ("0.8", "0.9"):
        assert env(api, "detect") == {
            "CNB_BUILDPACK_DIR": "/cnb/buildpacks/bp",
            "CNB_PLATFORM_DIR": "/platform",
            "CNB_BUILD_PLAN_PATH": "/tmp/plan.toml",
        }
        assert env(api, "build") == {
            "CNB_BUILDPACK_DIR": "/cnb/buildpacks/bp",
            "CNB_PLATFORM_DIR": "/platform",
            "CNB_BP_PLAN_PATH": "/tmp/plan.toml",
            "CNB_LAYERS_DIR": "/layers/bp",
        }


def test_0_10_and_later_get_the_target_and_0_12_the_exec_env() -> None:
    for api in ("0.10", "0.11", "0.12"):
        got = env(api, "build")
        assert got["CNB_TARGET_OS"] == "linux"
        assert got["CNB_TARGET_ARCH"] == "amd64"
        assert got["CNB_TARGET_DISTRO_NAME"] == "debian"
        assert got["CNB_TARGET_DISTRO_VERSION"] == "12"
        assert "CNB_TARGET_ARCH_VARIANT" not in got  # optional ones only when known
        assert ("CNB_EXEC_ENV" in got) is (api == "0.12")
    assert "CNB_TARGET_DISTRO_NAME" not in env("0.10", "detect", Target("linux", "arm64"))
    assert "CNB_TARGET_OS" not in env("0.9", "build")


def test_the_env_fragment_quotes_values_and_unsets_the_users_for_clear_env() -> None:
    script = contract.env_script({"A": "it's $HOME", "bad name": "x"}, ["SECRET", "B"])
    assert script == "unset B\nunset SECRET\nexport A='it'\"'\"'s $HOME'\n"


@pytest.mark.parametrize(
    ("targets", "stacks", "stack", "ok"),
    [
        ((), (), "busybox", True),
        ((TargetSpec(os="linux"),), (), "debian", True),
        ((TargetSpec(os="linux", arch="arm64"),), (), "debian", False),
        ((TargetSpec(os="linux", distros=(("debian", "12"),)),), (), "debian", True),
        ((TargetSpec(os="linux", distros=(("ubuntu", "24.04"),)),), (), "debian", False),
        ((TargetSpec(os="linux", distros=(("debian", ""),)),), (), "debian", True),
        ((TargetSpec(os="*", arch="*"),), (), "debian", True),
        ((TargetSpec(os="windows"),), ("debian",), "debian", False),  # targets win over stacks
        ((), ("io.buildpacks.stacks.jammy",), "debian", False),
        ((), ("debian",), "debian", True),
        ((), ("*",), "anything", True),
    ],
)
def test_targets_then_stacks_decide_where_a_buildpack_runs(
    targets: tuple[TargetSpec, ...], stacks: tuple[str, ...], stack: str, ok: bool
) -> None:
    why = contract.incompatibility(targets, stacks, DEBIAN, stack)
    assert (why is None) is ok
    if not ok:
        assert ("targets" in why) is bool(targets)


def test_targets_and_stacks_are_read_from_buildpack_toml() -> None:
    data = tomllib.loads(
        '[[targets]]\nos = "linux"\narch = "amd64"\n'
        '[[targets.distros]]\nname = "debian"\nversion = "12"\n'
        '[[stacks]]\nid = "io.buildpacks.stacks.bookworm"\n'
    )
    assert contract.parse_targets(data) == (TargetSpec("linux", "amd64", "", (("debian", "12"),)),)
    assert contract.parse_stacks(data) == ("io.buildpacks.stacks.bookworm",)
    with pytest.raises(ValueError, match=r"targets\[0\].arch: must be a string"):
        contract.parse_targets({"targets": [{"arch": 64}]})
    with pytest.raises(ValueError, match=r"stacks\[0\].id"):
        contract.parse_stacks({"stacks": [{}]})


@pytest.mark.parametrize(
    ("plan", "entries", "reason"),
    [
        ("", [], None),
        ('[[provides]]\nname = "py"\n[[requires]]\nname = "py"\n', ["py"], None),
        ('[[requires]]\nname = "node"\n', [], "requires node, which nothing provides"),
        ('[[provides]]\nname = "node"\n', [], "provides node, which nothing requires"),
        (
            '[[requires]]\nname = "node"\n[[or]]\n[[or.provides]]\nname = "x"\n'
            '[[or.requires]]\nname = "x"\n',
            ["x"],
            None,
        ),
        ("[[provides]", [], "not valid TOML"),
    ],
)
def test_a_single_buildpack_group_satisfies_its_own_plan(
    plan: str, entries: list[str], reason: str | None
) -> None:
    found, why = contract.resolve_plan(plan)
    assert [e.name for e in found] == entries
    if reason is None:
        assert why is None
    else:
        assert why is not None
        assert reason in why


def test_the_buildpack_plan_round_trips_through_toml() -> None:
    entries = [
        Entry("python", {"version": "3.11", "pins": [1, 2], "deep": {"a": True}}),
        Entry("x"),
    ]
    text = contract.plan_toml(entries)
    assert tomllib.loads(text) == {
        "entries": [
            {
                "name": "python",
                "metadata": {"version": "3.11", "pins": [1, 2], "deep": {"a": True}},
            },
            {"name": "x"},
        ]
    }


def test_layers_are_read_by_their_types() -> None:
    files = {
        "deps.toml": b"[types]\nlaunch = true\ncache = true\n",
        "tools.toml": b"[types]\nbuild = true\n",
        "old.toml": b"[metadata]\nx = 1\n",
        "launch.toml": b"",
        "deps/env/X": b"1",
    }
    layers = contract.read_layers(files)
    assert layers == [
        Layer("deps", launch=True, cache=True),
        Layer("old"),
        Layer("tools", build=True),
    ]
    assert layers[1].ignored
    with pytest.raises(ValueError, match=r"types\.launch must be true or false"):
        contract.read_layers({"bad.toml": b'[types]\nlaunch = "yes"\n'})


def test_env_directories_follow_the_suffix_rules() -> None:
    env = {"PATH": "/bin", "KEEP": "mine", "JOIN": "a"}
    contract.apply_env_dir(
        env,
        {
            "PLAIN": b"over",  # no suffix: override
            "KEEP.default": b"theirs",
            "NEW.default": b"set",
            "PATH.prepend": b"/opt/bin",
            "PATH.delim": b":",
            "JOIN.append": b"b",  # no delim: joined as is
        },
    )
    assert env == {
        "PATH": "/opt/bin:/bin",
        "KEEP": "mine",
        "JOIN": "ab",
        "PLAIN": "over",
        "NEW": "set",
    }


def test_the_launch_env_takes_launch_layers_only_with_their_bin_and_per_process_dirs() -> None:
    layers = [Layer("deps", launch=True), Layer("cache", cache=True)]
    files = {
        "deps/bin": b"",
        "deps/env/A": b"1",
        "deps/env.launch/B.default": b"2",
        "deps/env.build/C": b"build only",
        "deps/env.launch/worker/A": b"worker's",
        "cache/env/D": b"cache only",
    }
    env, per = contract.launch_env({"PATH": "/bin"}, "/layers/bp", layers, files, ["web", "worker"])
    assert env == {"PATH": "/layers/bp/deps/bin:/bin", "A": "1", "B": "2"}
    assert per == {"worker": {"A": "worker's"}}


def test_launch_toml_by_api_version() -> None:
    old = contract.parse_launch(
        '[[processes]]\ntype = "web"\ncommand = "serve"\nargs = ["a b"]\n'
        '[[processes]]\ntype = "cli"\ncommand = "tool"\ndirect = true\nargs = ["x"]\n'
        'working-dir = "/tmp"\n',
        "0.7",
    )
    web, cli = old.processes
    assert (web.line, web.direct) == ("serve 'a b'", False)
    assert (cli.line, cli.working_dir) == ("tool x", "")  # working-dir came with 0.8
    assert "working-dir came with buildpack API 0.8" in old.warnings[0]
    new = contract.parse_launch(
        '[[processes]]\ntype = "web"\ncommand = ["gunicorn", "app:app"]\nargs = ["-b", ":8080"]\n'
        'default = true\nworking-dir = "/workspace/src"\n'
        '[[labels]]\nkey = "team"\nvalue = "core"\n',
        "0.9",
    )
    [proc] = new.processes
    assert proc.line == "gunicorn app:app -b :8080"
    assert (
        proc.shell({"X": "1"}) == "export X=1; cd /workspace/src && exec gunicorn app:app -b :8080"
    )
    assert proc.default
    assert new.labels == {"team": "core"}
    sh = contract.parse_launch(
        '[[processes]]\ntype = "web"\ncommand = ["sh", "-c", "a && b"]\n', "0.10"
    )
    assert sh.processes[0].line == sh.processes[0].shell() == "a && b"
    with pytest.raises(ValueError, match="wants an array of strings"):
        contract.parse_launch('[[processes]]\ntype = "web"\ncommand = "serve"\n', "0.9")
    with pytest.raises(ValueError, match="wants a non-empty string"):
        contract.parse_launch('[[processes]]\ntype = "web"\ncommand = ["serve"]\n', "0.8")
    with pytest.raises(ValueError, match="only one process may be the default"):
        contract.parse_launch(
            '[[processes]]\ntype = "a"\ncommand = ["x"]\ndefault = true\n'
            '[[processes]]\ntype = "b"\ncommand = ["y"]\ndefault = true\n',
            "0.10",
        )


def test_0_12_keeps_the_processes_of_the_production_exec_env() -> None:
    text = (
        '[[processes]]\ntype = "web"\ncommand = ["serve"]\nexec-env = ["production"]\n'
        '[[processes]]\ntype = "tests"\ncommand = ["pytest"]\nexec-env = ["test"]\n'
        '[[processes]]\ntype = "any"\ncommand = ["x"]\n'
    )
    assert [p.type for p in contract.parse_launch(text, "0.12").processes] == ["web", "any"]
    assert [p.type for p in contract.parse_launch(text, "0.11").processes] == [
        "web",
        "tests",
        "any",
    ]


def test_unmet_entries_must_be_in_the_plan() -> None:
    plan = [Entry("python")]
    assert contract.parse_build('[[unmet]]\nname = "python"\n', plan) == ["python"]
    with pytest.raises(ValueError, match="is not an entry of the buildpack plan"):
        contract.parse_build('[[unmet]]\nname = "node"\n', plan)
