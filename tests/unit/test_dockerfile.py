"""The Dockerfile copy a build runs so that each ``RUN`` gets the CA bundle (runtime/dockerfile.py).

What a user would notice: each of their instructions is still there on its own line and does
what it did, every ``RUN`` of every stage gets the mounts, stages that run nothing get no
``ARG`` lines, and an error naming a line names the line of their file.
"""

from __future__ import annotations

from lastbackend.runtime.dockerfile import MOUNTS, NAMES, with_ca

FLAGS = " ".join(MOUNTS)
ARGS = "".join(f"ARG {name}\n" for name in NAMES)


def test_every_run_of_every_stage_mounts_the_bundle_and_each_stage_declares_the_variables() -> None:
    text = (
        "# a comment\n"
        "FROM python:3.12 AS deps\n"
        "RUN pip install -r requirements.txt\n"
        "FROM node:20\n"
        "COPY --from=deps /x /x\n"
        'RUN ["npm", "ci"]\n'
        "run echo lower-case\n"
    )
    out = with_ca(text)
    assert out.text == (
        "# a comment\n"
        "FROM python:3.12 AS deps\n"
        f"{ARGS}"
        f"RUN {FLAGS} pip install -r requirements.txt\n"
        "FROM node:20\n"
        f"{ARGS}"
        "COPY --from=deps /x /x\n"
        f'RUN {FLAGS} ["npm", "ci"]\n'
        f"run {FLAGS} echo lower-case\n"
    )
    # line 4 of the copy is the first ARG: it came from the FROM on line 2
    assert [out.original_line(n) for n in (1, 2, 3, 2 + len(NAMES) + 1)] == [1, 2, 2, 3]


def test_continuations_comments_and_onbuild_are_read_as_docker_reads_them() -> None:
    text = (
        "FROM debian:bookworm\n"
        "RUN apt-get update \\\n"
        "# a comment inside the instruction\n"
        "\n"
        "  && apt-get install -y ca-certificates\n"
        "ONBUILD RUN make\n"
        "ENV NOTE=RUN\n"
        "RUN \\\n"
        "  curl https://example.com"  # the last line, without a newline
    )
    out = with_ca(text).text
    assert out.count("--mount=") == 2 * len(MOUNTS)  # two RUNs; not ONBUILD's, not ENV's value
    assert f"RUN {FLAGS} apt-get update \\\n# a comment inside" in out
    assert "ONBUILD RUN make\n" in out
    assert out.endswith(f"RUN {FLAGS} \\\n  curl https://example.com")


def test_the_escape_directive_and_a_stage_without_run() -> None:
    text = "# escape=`\nFROM mcr.microsoft.com/x\nRUN echo a `\n  b\nFROM scratch\nCOPY a /a\n"
    out = with_ca(text).text
    assert out == (
        f"# escape=`\nFROM mcr.microsoft.com/x\n{ARGS}RUN {FLAGS} echo a `\n  b\n"
        "FROM scratch\nCOPY a /a\n"  # nothing runs there: no ARG lines in its history
    )


def test_a_dockerfile_without_run_is_unchanged() -> None:
    text = 'FROM busybox\nCOPY . /www\nCMD ["httpd"]\n'
    out = with_ca(text)
    assert out.text == text
    assert out.original_line(3) == 3


def test_buildkit_errors_read_as_the_classic_builders_and_name_the_repositorys_lines() -> None:
    from lastbackend.runtime.docker import _buildkit_error

    text = with_ca("FROM busybox\nRUN true\nBOGUS x\n")
    tail = [
        "#6 [2/2] RUN exit 7",
        "#6 ERROR: executor failed running [/bin/sh -c exit 7]: exit code: 7",
        "------",
        " > [2/2] RUN exit 7:",
        "------",
        "executor failed running [/bin/sh -c exit 7]: exit code: 7",
    ]
    classic = "The command '/bin/sh -c exit 7' returned a non-zero code: 7"
    assert _buildkit_error(tail, text, 1) == classic
    newer = (
        'ERROR: failed to solve: process "/bin/sh -c exit 7" did not complete successfully: '
        "exit code: 7"
    )  # a CLI with buildx says it this way
    assert _buildkit_error(["#6 ERROR: ...", newer], text, 1) == classic
    parse = (
        "failed to solve with frontend dockerfile.v0: failed to create LLB definition: "
        f"dockerfile parse error line {3 + len(NAMES)}: unknown instruction: BOGUS"
    )
    assert (
        _buildkit_error([parse], text, 1)
        == "dockerfile parse error line 3: unknown instruction: BOGUS"
    )
