"""Which writes may be sent again after their answer was lost (store/txn_outcome.py)."""

from __future__ import annotations

import pytest

from lastbackend.store.etcd import KV, Cmp, Op
from lastbackend.store.txn_outcome import retry_is_safe

KEY = "/lastbackend/projects/p/meta"
READ = KV(KEY, b"old", create_revision=5, mod_revision=9, version=2)


@pytest.mark.parametrize(
    ("compare", "success"),
    [
        ([Cmp.absent(KEY)], [Op.put(KEY, "new")]),  # a create
        ([Cmp.unchanged(READ, KEY)], [Op.put(KEY, "new")]),  # an update
        ([Cmp.unchanged(READ, KEY)], [Op.delete(KEY)]),  # a delete as read
        ([Cmp.present(KEY)], [Op.delete(KEY)]),
        ([Cmp.created_at(KEY, 5)], [Op.delete(KEY)]),
        ([Cmp.value_is(KEY, "old")], [Op.put(KEY, "new")]),
        ([Cmp.unchanged(READ, KEY)], [Op.delete_prefix("/lastbackend/projects/p/")]),
    ],
)
def test_a_write_that_falsifies_its_own_guard_may_be_sent_again(
    compare: list[Cmp], success: list[Op]
) -> None:
    assert retry_is_safe(compare, success, [])


@pytest.mark.parametrize(
    ("compare", "success", "failure"),
    [
        ([], [Op.put(KEY, "new")], []),  # unconditional: a late copy would apply again
        ([Cmp.created_at("/lastbackend/system/leader/x", 3)], [Op.put(KEY, "new")], []),  # fence
        ([Cmp.value_is(KEY, "same")], [Op.put(KEY, "same")], []),  # writes what it compares
        ([Cmp.absent("/lastbackend/other")], [Op.put(KEY, "new")], []),  # guards another key
        ([Cmp.absent(KEY)], [Op.put(KEY, "new")], [Op.put("/lastbackend/x", "y")]),
    ],
)
def test_a_write_a_late_copy_could_apply_again_is_not_sent_again(
    compare: list[Cmp], success: list[Op], failure: list[Op]
) -> None:
    assert not retry_is_safe(compare, success, failure)
