"""Images: seed 001's image info and image source objects, as stored and as sent.

An image is something the platform builds from a git source and pushes to a docker repository:
``images/<iid>/meta`` holds ``{"name", "description", "created", "updated"}`` where ``name`` is
that repository (``registry.local:5000/acme/web``), ``images/<iid>/source`` holds ``{"hub",
"owner", "repo", "branch"}`` (the same object as a service's source), and each build is
``images/<iid>/builds/<n>``.

A name is a docker repository: an image reference without a tag or digest, since each build
pushes its own tag. Names are unique (see ``keys.image_name``): two images pushing to one
repository would overwrite each other's tags.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, NewType

import attrs

from lastbackend.model.common import (
    IMAGE_REPOSITORY,
    NOT_UUID,
    Text,
    anchored,
    check_image,
    is_uuid,
    keywords,
)
from lastbackend.model.platform import ServiceSource

ImageName = NewType("ImageName", str)
"""A docker repository: ``[host[:port]/]path``, lowercase path components, no tag or digest."""

MAX_NAME = 255  # what a registry accepts for a repository name

ImageSource = ServiceSource
"""``images/<iid>/source``: the same object as a service's source."""


@keywords(pattern=anchored(IMAGE_REPOSITORY), minLength=1, maxLength=MAX_NAME, **NOT_UUID)
def check_image_name(value: str) -> str:
    """A docker repository like 'registry.local:5000/acme/web': no tag, no digest."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_NAME:
        raise ValueError(f"must be at most {MAX_NAME} characters, got {len(value)}")
    if "@" in value or ":" in value.rpartition("/")[2]:
        raise ValueError(
            f"{value!r} has a tag or digest; an image is named by its repository alone, "
            "like 'registry.local:5000/acme/web' (each build pushes its own tag)"
        )
    try:
        check_image(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a docker repository like 'registry.local:5000/acme/web': "
            "lowercase letters, digits and separators (. _ -) in each path component"
        ) from None
    if is_uuid(value):
        raise ValueError(f"{value!r} looks like an id; names must not be UUIDs")
    return value


CHECKS: dict[Any, tuple[type, Callable[[Any], Any]]] = {ImageName: (str, check_image_name)}
"""Each validated type: the JSON type it must arrive as, and its checker."""


@attrs.frozen(kw_only=True)
class ImageMeta:
    """``images/<iid>/meta``: the image info object, in the document's field order."""

    name: ImageName
    description: Text = Text("")
    created: datetime
    updated: datetime


@attrs.frozen
class ImageCreate:
    """The body of POST and PUT; PATCH merges its fields over the stored ones."""

    name: ImageName
    source: ImageSource
    description: Text = Text("")
