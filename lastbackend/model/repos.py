"""Build tags (seed 003): repos, branches, tags and typed artifacts, as sent and as stored.

The document's objects nest: a repo holds branches, a branch tags, a tag artifacts. In etcd each
object's own fields are one key (``store/repos.py``), so a change to one tag touches one key and
a watch sees which object changed. The ``*Meta`` classes are those stored values; :class:`Repo`,
:class:`Branch` and :class:`Tag` are the nested shapes of request and response bodies.

Field rules, chosen so a body either means exactly one thing or is refused:

- The scalar fields of repos, branches and tags (``source_url``, ``job_url``, ``build_id``,
  ``build_url``, ``commit_id``) are optional strings defaulting to ``""``: the document shows
  them, but a parent made implicitly (a tag PUT under a new branch) has nothing to put in them.
  ``null`` is refused, like any value that is not a string.
- An artifact's fields are required and must not be empty: an artifact is there to be fetched,
  and a consumer cannot fetch from a missing URL. A missing field or an unknown ``type`` is a
  422 that names it.
- Ids (:data:`PathId`) are path segments of both the URL and the etcd key; see
  :func:`check_path_id`.
- Children (``branches``, ``tags``, ``artifacts``) default to empty: a PUT replaces the object
  whole, so leaving them out removes the ones stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal, NewType

import attrs

from lastbackend.model.common import keywords

PathId = NewType("PathId", str)
"""The id of a repo, branch, tag or artifact: one segment of its URL and of its etcd key."""
FieldText = NewType("FieldText", str)
"""A scalar field of a repo, branch or tag: any text without control characters, may be empty."""
ArtifactText = NewType("ArtifactText", str)
"""A field of an artifact: like :data:`FieldText`, but required and not empty."""

MAX_ID = 128
MAX_TEXT = 4096
ID_CHARS = "A-Z a-z 0-9 . _ - ~ : + @"
ID = re.compile(r"[A-Za-z0-9._~:+@-]{1,128}")
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@keywords(pattern=f"^(?:{ID.pattern})$", **{"not": {"enum": [".", ".."]}})
def check_path_id(value: str) -> str:
    """1 to 128 of ``A-Z a-z 0-9 . _ - ~ : + @``, and not ``.`` or ``..``.

    Wide enough for the ids the document suggests (``qpid-jms-client``, ``amq-broker.zip``), image
    ids (``sha256:9f2c...``), versions (``1.0+build.7``) and ``name@digest``; narrow enough that no
    id holds a ``/`` (it would escape its place in the key tree), a ``%`` or space (URL escaping),
    or is a segment that URL normalisation removes.
    """
    if value in (".", ".."):
        raise ValueError(f"{value!r} is not an id: '.' and '..' are path steps, not names")
    if len(value) > MAX_ID:
        raise ValueError(f"must be at most {MAX_ID} characters, got {len(value)}")
    if not ID.fullmatch(value):
        raise ValueError(f"{value!r} is not an id: 1 to {MAX_ID} of {ID_CHARS}")
    return value


@keywords(maxLength=MAX_TEXT, pattern=_NO_CONTROL)
def check_field_text(value: str) -> str:
    """At most 4096 characters, no control characters."""
    if len(value) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


@keywords(minLength=1, maxLength=MAX_TEXT, pattern=_NO_CONTROL)
def check_artifact_text(value: str) -> str:
    """Not empty, at most 4096 characters, no control characters."""
    if not value:
        raise ValueError("must not be empty: an artifact's fields say where to get it")
    return check_field_text(value)


CHECKS: dict[Any, tuple[type, Callable[[Any], Any]]] = {
    PathId: (str, check_path_id),
    FieldText: (str, check_field_text),
    ArtifactText: (str, check_artifact_text),
}
"""This family's validated types, registered with the converter like ``common.CHECKS``."""


# artifacts -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class FileArtifact:
    type: Literal["file"] = "file"
    url: ArtifactText


@attrs.frozen(kw_only=True)
class ContainerArtifact:
    type: Literal["container"] = "container"
    registry_url: ArtifactText
    repository: ArtifactText
    image_id: ArtifactText


@attrs.frozen(kw_only=True)
class MavenArtifact:
    type: Literal["maven"] = "maven"
    repository_url: ArtifactText
    group_id: ArtifactText
    artifact_id: ArtifactText
    version: ArtifactText


@attrs.frozen(kw_only=True)
class RpmArtifact:
    type: Literal["rpm"] = "rpm"
    repository_url: ArtifactText
    name: ArtifactText
    version: ArtifactText
    release: ArtifactText


Artifact = FileArtifact | ContainerArtifact | MavenArtifact | RpmArtifact
"""``.../artifacts/<a>``: stored exactly as the document shows it, ``type`` included."""
ARTIFACTS: dict[str, type] = {
    "file": FileArtifact,
    "container": ContainerArtifact,
    "maven": MavenArtifact,
    "rpm": RpmArtifact,
}


# stored values: one object's own fields ----------------------------------------------------------


@attrs.frozen
class RepoMeta:
    """``repos/<r>/meta``."""

    source_url: FieldText = FieldText("")


@attrs.frozen
class BranchMeta:
    """``repos/<r>/branches/<b>/meta``."""

    job_url: FieldText = FieldText("")


@attrs.frozen
class TagMeta:
    """``repos/<r>/branches/<b>/tags/<t>/meta``."""

    build_id: FieldText = FieldText("")
    build_url: FieldText = FieldText("")
    commit_id: FieldText = FieldText("")


# the document's nested shapes --------------------------------------------------------------------


@attrs.frozen
class Tag:
    build_id: FieldText = FieldText("")
    build_url: FieldText = FieldText("")
    commit_id: FieldText = FieldText("")
    artifacts: dict[PathId, Artifact] = attrs.Factory(dict)

    @property
    def meta(self) -> TagMeta:
        return TagMeta(self.build_id, self.build_url, self.commit_id)

    @classmethod
    def of(cls, meta: TagMeta, artifacts: dict[PathId, Artifact]) -> Tag:
        return cls(meta.build_id, meta.build_url, meta.commit_id, artifacts)


@attrs.frozen
class Branch:
    job_url: FieldText = FieldText("")
    tags: dict[PathId, Tag] = attrs.Factory(dict)

    @property
    def meta(self) -> BranchMeta:
        return BranchMeta(self.job_url)

    @classmethod
    def of(cls, meta: BranchMeta, tags: dict[PathId, Tag]) -> Branch:
        return cls(meta.job_url, tags)


@attrs.frozen
class Repo:
    source_url: FieldText = FieldText("")
    branches: dict[PathId, Branch] = attrs.Factory(dict)

    @property
    def meta(self) -> RepoMeta:
        return RepoMeta(self.source_url)

    @classmethod
    def of(cls, meta: RepoMeta, branches: dict[PathId, Branch]) -> Repo:
        return cls(meta.source_url, branches)


Node = Repo | Branch | Tag | FileArtifact | ContainerArtifact | MavenArtifact | RpmArtifact
"""Any object of the family, nested whole."""

LEVELS: tuple[str, ...] = ("repo", "branch", "tag", "artifact")
"""The kind of object named by 1, 2, 3 or 4 ids: ``(r,)``, ``(r, b)``, ``(r, b, t)``,
``(r, b, t, a)``."""
BODIES: tuple[Any, ...] = (Repo, Branch, Tag, Artifact)
"""The body type of a PUT at each level."""
STORED: tuple[Any, ...] = (RepoMeta, BranchMeta, TagMeta, Artifact)
"""The type of the key that holds each level's own fields."""
COLLECTIONS: tuple[str, ...] = ("branches", "tags", "artifacts")
"""The field (and URL segment) holding the children of a repo, branch and tag."""


def address(ids: tuple[str, ...]) -> str:
    """The document's name for an object (its AMQP address): ``repos/<r>/branches/<b>/...``."""
    path = f"repos/{ids[0]}"
    for level, oid in zip(COLLECTIONS, ids[1:], strict=False):
        path += f"/{level}/{oid}"
    return path


def children(node: Any) -> dict[PathId, Any]:
    """The nested children of a repo, branch or tag; none for an artifact."""
    if isinstance(node, Repo):
        return node.branches
    if isinstance(node, Branch):
        return node.tags
    if isinstance(node, Tag):
        return node.artifacts
    return {}


def own(node: Any) -> Any:
    """What is stored at an object's own key: its fields without its children."""
    if isinstance(node, Repo | Branch | Tag):
        return node.meta
    return node


def compose(meta: Any, kids: dict[PathId, Any]) -> Any:
    """The nested object from its stored fields and its (already nested) children."""
    if isinstance(meta, RepoMeta):
        return Repo.of(meta, kids)
    if isinstance(meta, BranchMeta):
        return Branch.of(meta, kids)
    if isinstance(meta, TagMeta):
        return Tag.of(meta, kids)
    return meta


def count_keys(node: Any) -> int:
    """How many etcd keys an object and its children take: one each."""
    return 1 + sum(count_keys(child) for child in children(node).values())


UNIONS: dict[Any, tuple[str, dict[str, type]]] = {Artifact: ("type", ARTIFACTS)}
"""Tagged unions the converter decodes by a field (merged with ``apps.UNIONS`` in codec)."""
