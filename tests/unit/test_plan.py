"""The services controller's decisions, step by step, without etcd or Docker."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from lastbackend.controllers.plan import Observed, Plan, choose_nodes, plan
from lastbackend.model.pods import Node, Pod, PodSpec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_ids = itertools.count()


def pod(template: str, *, node: str = "n1", age: int = 0, memory: int = 128) -> Pod:
    n = next(_ids)
    spec = PodSpec(image=f"img:{template}", memory=memory)
    return Pod(f"pod-{n:03d}", "p", "s", node, template, spec, T0 + timedelta(seconds=age or n))


def node(name: str, memory: int = 1024) -> Node:
    return Node(name, name, memory, 2, "20.10", T0)


def test_create_all_missing_at_once_when_nothing_rolls() -> None:
    assert plan(3, "v1", [], {"n1"}) == Plan(create=3)
    one = Observed(pod("v1"), running=True)
    assert plan(3, "v1", [one], {"n1"}) == Plan(create=2)


def test_scale_down_removes_the_newest() -> None:
    a, b, c = (Observed(pod("v1", age=i), running=True) for i in (1, 2, 3))
    assert plan(1, "v1", [a, c, b], {"n1"}) == Plan(delete=(c.pod, b.pod))


def test_pods_made_in_one_second_go_by_creation_order() -> None:
    same = [pod("v1", age=5) for _ in range(3)]
    observed = [
        Observed(p, running=True, order=rev) for p, rev in zip(same, (30, 10, 20), strict=True)
    ]
    assert plan(1, "v1", observed, {"n1"}).delete == (same[0], same[2])  # revisions 30, 20


def test_no_image_or_zero_replicas_removes_everything() -> None:
    pods = [Observed(pod("v1"), True), Observed(pod("v0"), False)]
    assert plan(0, "v1", pods, {"n1"}).delete == tuple(o.pod for o in pods)
    assert plan(2, None, pods, {"n1"}).delete == tuple(o.pod for o in pods)


def test_pods_on_lost_nodes_are_replaced_and_go_once_the_replacements_serve() -> None:
    # the lost node's containers last said they serve: replaced first, removed after
    gone = Observed(pod("v1", node="dead"), running=True)
    kept = Observed(pod("v1", node="n1"), running=True)
    assert plan(2, "v1", [gone, kept], {"n1"}) == Plan(create=1)
    starting = Observed(pod("v1", node="n1"), running=False)
    assert plan(2, "v1", [gone, kept, starting], {"n1"}) == Plan()
    serving = attrs.evolve(starting, running=True)
    assert plan(2, "v1", [gone, kept, serving], {"n1"}) == Plan(delete=(gone.pod,))
    # not serving: nothing to wait for
    dead = Observed(pod("v1", node="dead"), running=False)
    assert plan(2, "v1", [dead, kept], {"n1"}) == Plan(create=1, delete=(dead.pod,))


def test_a_whole_lost_node_is_replaced_at_once_even_mid_rollout() -> None:
    # replacements take no room on a live node, so they do not wait for each other
    gone = [Observed(pod("v1", node="dead"), running=True) for _ in range(3)]
    assert plan(3, "v1", gone, {"n1"}) == Plan(create=3)
    # mid-rollout: the lost old pods serve until new ones do; the surge is for live nodes
    old = [Observed(pod("v0", node="dead"), running=True) for _ in range(3)]
    assert plan(3, "v1", old, {"n1"}) == Plan(create=3)


def test_rollout_surges_by_one_and_waits_for_the_new_pod() -> None:
    old = [Observed(pod("v1"), running=True) for _ in range(3)]
    assert plan(3, "v2", old, {"n1"}) == Plan(create=1)
    starting = Observed(pod("v2"), running=False)
    assert plan(3, "v2", [*old, starting], {"n1"}).empty


def test_old_pods_that_do_not_serve_go_at_once() -> None:
    broken = [Observed(pod("v1"), running=False) for _ in range(2)]
    result = plan(2, "v2", broken, {"n1"})
    assert sorted(p.id for p in result.delete) == sorted(o.pod.id for o in broken)
    assert result.create == 2


def test_a_failing_new_template_never_takes_the_old_pods_down() -> None:
    old = [Observed(pod("v1"), running=True) for _ in range(2)]
    failing = Observed(pod("v2"), running=False)
    for _ in range(5):  # however often it is asked
        assert plan(2, "v2", [*old, failing], {"n1"}).empty


@pytest.mark.parametrize(("replicas", "before"), [(1, 1), (3, 3), (3, 1), (2, 5), (4, 0)])
def test_rollout_simulation_never_drops_below_replicas_and_converges(
    replicas: int, before: int
) -> None:
    """Apply plans step by step; a pod created in one step runs from the next one on."""
    world: dict[str, Observed] = {}
    for _ in range(before):
        p = pod("v1")
        world[p.id] = Observed(p, running=True)
    serving_floor = min(replicas, before)
    for _step in range(50):
        # last step's pods are running now
        world = {k: Observed(o.pod, running=True) for k, o in world.items()}
        step = plan(replicas, "v2", list(world.values()), {"n1"})
        if step.empty:
            break
        for gone in step.delete:
            del world[gone.id]
        serving = sum(o.running for o in world.values())
        assert serving >= serving_floor, f"dropped to {serving} serving"
        assert len(world) + step.create <= max(replicas, before) + 1
        for _ in range(step.create):
            p = pod("v2")
            world[p.id] = Observed(p, running=False)
    else:
        pytest.fail("did not converge")
    assert len(world) == replicas
    assert {o.pod.template for o in world.values()} <= {"v2"}


def test_choose_nodes_by_free_memory() -> None:
    nodes = [node("a", 1024), node("b", 2136)]
    used = [pod("v1", node="b", memory=1536)]  # b has 600 free, a 1024: a, a (512 left), then b
    assert choose_nodes(nodes, used, 256, 3) == ["a", "a", "b"]


def test_choose_nodes_reports_what_does_not_fit() -> None:
    assert choose_nodes([node("a", 300)], [], 256, 2) == ["a"]
    assert choose_nodes([], [], 64, 1) == []


def test_ties_go_to_the_first_name() -> None:
    assert choose_nodes([node("b"), node("a")], [], 128, 1) == ["a"]
