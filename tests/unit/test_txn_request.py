"""The TxnRequest a transaction sends says what its compares and ops say, field by field:
Op.add_to and Cmp.add_to fill the request in place, and a field left at its default must not
change what etcd compares (a create revision of 0 is "absent", not "no comparison")."""

from __future__ import annotations

from lastbackend.store.etcd import KV, Cmp, Compare, Op, TxnRequest


def _request(compare: list[Cmp], success: list[Op], failure: tuple[Op, ...] = ()) -> TxnRequest:
    request = TxnRequest()
    for c in compare:
        c.add_to(request.compare)
    for o in success:
        o.add_to(request.success)
    for o in failure:
        o.add_to(request.failure)
    return request


def test_a_create_shaped_txn_compares_absence_and_puts_both_keys() -> None:
    r = _request(
        [Cmp.absent("/i/p"), Cmp.present("/parent")],
        [Op.put("/i/p", "id1"), Op.put("/o/id1/meta", b"{}", lease=7)],
        [Op.get("/i/p")],
    )
    absent, present = r.compare
    assert (absent.key, absent.target, absent.result) == (b"/i/p", Compare.CREATE, Compare.EQUAL)
    assert absent.WhichOneof("target_union") == "create_revision"
    assert absent.create_revision == 0
    assert (present.result, present.create_revision) == (Compare.GREATER, 0)
    puts = [op.request_put for op in r.success]
    assert [(p.key, p.value, p.lease) for p in puts] == [
        (b"/i/p", b"id1", 0),
        (b"/o/id1/meta", b"{}", 7),
    ]
    assert r.failure[0].WhichOneof("request") == "request_range"
    assert r.failure[0].request_range.key == b"/i/p"


def test_an_empty_value_is_still_a_put_and_each_kind_of_compare_keeps_its_field() -> None:
    r = _request(
        [
            Cmp.unchanged(KV("/a", b"", 3, 4, 1), "/a"),
            Cmp.value_is("/b", ""),
            Cmp.nothing_created_after("/c/", 9),
        ],
        [Op.put("/a", b""), Op.delete("/b"), Op.delete_prefix("/c/")],
        [Op.get_prefix("/c/", revision=5, keys_only=True)],
    )
    mod, value, created = r.compare
    assert (mod.WhichOneof("target_union"), mod.mod_revision) == ("mod_revision", 4)
    assert (value.WhichOneof("target_union"), value.value) == ("value", b"")
    assert (created.result, created.create_revision, created.range_end) == (
        Compare.LESS,
        10,
        b"/c0",
    )
    assert [op.WhichOneof("request") for op in r.success] == [
        "request_put",
        "request_delete_range",
        "request_delete_range",
    ]
    assert r.success[2].request_delete_range.range_end == b"/c0"
    get = r.failure[0].request_range
    assert (get.key, get.range_end, get.revision, get.keys_only) == (b"/c/", b"/c0", 5, True)
