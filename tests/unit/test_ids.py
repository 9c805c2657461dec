"""Object ids: version-4 UUIDs from the OS's randomness, none repeated, not across a fork either."""

from __future__ import annotations

import os
import random
import uuid

from lastbackend.model.common import new_id


def test_ids_are_version_4_uuids_and_never_repeat() -> None:
    made = [new_id() for _ in range(5000)]  # past several 4 KiB pools
    assert len(set(made)) == len(made)
    assert {uuid.UUID(i).version for i in made} == {4}
    assert all(str(uuid.UUID(i)) == i for i in made)


def test_seeding_the_shared_random_does_not_repeat_an_id() -> None:
    random.seed(7)
    first = new_id()
    random.seed(7)
    assert new_id() != first


def test_a_forked_child_hands_out_ids_of_its_own() -> None:
    new_id()  # the parent's pool holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the ids it makes go to the parent
        try:
            os.write(write, "\n".join(new_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_id() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent, "a forked child repeated the parent's next ids"
