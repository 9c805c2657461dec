"""The container runtime seam (``base``) and its implementations.

``docker.DockerRuntime`` is the real one and the only module that imports the Docker SDK;
``fake.FakeRuntime`` is an in-memory one for unit tests of controller logic. Neither is imported
here, so ``from lastbackend.node.runtime import Runtime`` does not load the SDK.
"""

from lastbackend.node.runtime.base import (
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerSpec,
    ContainerState,
    ImageError,
    NodeCapacity,
    RegistryAuth,
    Runtime,
    RuntimeEvent,
    RuntimeUnavailable,
)

__all__ = [
    "ContainerNotFound",
    "ContainerRuntimeError",
    "ContainerSpec",
    "ContainerState",
    "ImageError",
    "NodeCapacity",
    "RegistryAuth",
    "Runtime",
    "RuntimeEvent",
    "RuntimeUnavailable",
]
