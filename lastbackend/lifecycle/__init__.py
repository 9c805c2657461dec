"""The lifecycle descriptor (document 002): which buildpack and platform APIs we support.

:mod:`~lastbackend.lifecycle.apis` holds the version rules, :mod:`~lastbackend.lifecycle.descriptor`
the file, the labels and the check that the CLI and staging share.

Staging is in its own modules, not re-exported here since they bring in the runtime seam:
``stacks`` (the build and run images), ``buildpacks`` (what can detect and build, in order) and
``staging`` (the engine: the buildpack and docker lifecycles over the runtime seam).
"""

from lastbackend.lifecycle.apis import Apis, ApiVersionError, Entry, Version, compare
from lastbackend.lifecycle.descriptor import (
    Descriptor,
    DescriptorError,
    Result,
    check,
    default_path,
    labels,
    load,
    loads,
    view,
)

__all__ = [
    "ApiVersionError",
    "Apis",
    "Descriptor",
    "DescriptorError",
    "Entry",
    "Result",
    "Version",
    "check",
    "compare",
    "default_path",
    "labels",
    "load",
    "loads",
    "view",
]
