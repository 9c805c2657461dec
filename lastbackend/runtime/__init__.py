"""The container runtime seam (``base``) and its implementation on Docker (``docker``).

The node agent, staging and builds all run containers through :class:`Runtime`.
``docker.DockerRuntime`` is the only module that imports the Docker SDK, and it is not imported
here, so ``from lastbackend.runtime import Runtime`` does not load the SDK. The in-memory runtime
for unit tests of controller logic is a test double (``tests/fakeruntime.py``), not in the wheel.
"""

from lastbackend.runtime.base import (
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
