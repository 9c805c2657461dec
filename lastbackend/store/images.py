"""Images: ``images/<iid>/meta`` and ``/source`` plus the name index ``helper/images/<name>``.

The shape of projects and services (``store/objects.py``): create compares the index key and the
meta key absent, update is a guarded read-modify-write that moves the index key on a rename,
delete removes ``images/<iid>/`` (builds included) and the index key in one transaction. The one
difference is the index key: an image name holds ``/``, so :func:`keys.image_name` encodes it
into one segment, and :class:`ImageLayout` uses that encoding wherever the index is touched.

Builds (``images/<iid>/builds/<n>``) belong to ``store/builds.py``; deleting an image deletes
them with it.
"""

from __future__ import annotations

import attrs

from lastbackend.model.images import ImageMeta, ImageSource
from lastbackend.store import keys
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import Layout, NameCache, Objects, Part


@attrs.frozen
class ImageLayout(Layout):
    """A layout whose index keys are :func:`keys.image_name`'s encoding of the name."""

    def index_key(self, name: str) -> str:
        return keys.image_name(name)


LAYOUT = ImageLayout(
    kind="image",
    index=keys.HELPER_IMAGES,
    subtrees=lambda iid: (keys.image(iid),),
    parts=lambda iid: {part: keys.image_part(iid, part) for part in keys.IMAGE_PARTS},
    codecs={"meta": Part(ImageMeta), "source": Part(ImageSource)},
)


def images(etcd: Etcd, cache: NameCache) -> Objects:
    return Objects(etcd, LAYOUT, cache)
