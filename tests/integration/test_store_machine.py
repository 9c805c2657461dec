"""A stateful property test of the projects/services store against an in-memory model.

Hypothesis drives random create / rename / describe / delete / lookup calls on the *store*
layer (``lastbackend.store.projects`` and ``.services``), by id and by name, with names from a
tiny alphabet so that collisions, renames onto taken names and stale references are common.
Two :class:`NameCache` instances stand for two API processes, so a name -> id hint cached by
one "process" goes stale when the other renames or deletes the object.

After every step the whole ``/lastbackend/`` tree is read back and checked twice: against the
model (exact key set and values), and against the model-free invariants of
:func:`tree_problems` (name index and meta match one to one, no key outside a live object).

Hypothesis' stateful tests are synchronous, so each machine runs the async store calls on its
own event loop (:class:`asyncio.Runner`) with its own etcd client on the session's server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from lastbackend.model.common import new_id
from lastbackend.model.platform import Meta, ServiceConfig
from lastbackend.store import keys, projects, services
from lastbackend.store.embedded import EmbeddedEtcd
from lastbackend.store.objects import Conflict, NameCache, NotFound, Objects, Record
from tests.support import RawEtcd

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------
# The model-free invariant of the key tree, shared with test_races.py.


def _meta_name(raw: bytes) -> str | None:
    try:
        name = json.loads(raw)["name"]
    except (ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def tree_problems(tree: Mapping[str, bytes]) -> list[str]:
    """Everything wrong with the projects/services part of a ``dump()``; empty when consistent.

    - every ``helper/projects/<name>`` points at a pid whose meta carries that name, and every
      project meta has exactly that helper;
    - the same for ``helper/projects/<pid>/services/<name>`` and service metas;
    - every other key (service parts, containers, builds, service helpers) belongs to a live
      project and service: nothing is left behind by a delete;
    - every service has ``helper/apps/<sid> -> <pid>`` and every such key has its service.
    """
    problems: list[str] = []
    project_index: dict[str, str] = {}  # name -> pid
    service_index: dict[tuple[str, str], str] = {}  # (pid, name) -> sid
    project_meta: dict[str, str | None] = {}  # pid -> name
    service_meta: dict[tuple[str, str], str | None] = {}  # (pid, sid) -> name
    service_keys: list[tuple[str, str, str]] = []  # (pid, sid, key) of non-meta service keys
    app_owners: dict[str, str] = {}  # sid -> pid, from helper/apps/

    for key, value in tree.items():
        if key.startswith(keys.HELPER_PROJECTS):
            rest = key[len(keys.HELPER_PROJECTS) :].split("/")
            if len(rest) == 1:
                project_index[rest[0]] = value.decode()
            elif len(rest) == 3 and rest[1] == "services":
                service_index[(rest[0], rest[2])] = value.decode()
            else:
                problems.append(f"unexpected helper key {key}")
        elif key.startswith(keys.HELPER_APPS):
            app_owners[key[len(keys.HELPER_APPS) :]] = value.decode()
        elif key.startswith(keys.PROJECTS):
            rest = key[len(keys.PROJECTS) :].split("/")
            if rest[1:] == ["meta"]:
                project_meta[rest[0]] = _meta_name(value)
            elif len(rest) >= 4 and rest[1] == "services":
                pid, sid = rest[0], rest[2]
                if rest[3:] == ["meta"]:
                    service_meta[(pid, sid)] = _meta_name(value)
                else:
                    service_keys.append((pid, sid, key))
            else:
                problems.append(f"unexpected project key {key}")
        else:
            problems.append(f"key outside projects and helpers: {key}")

    for name, pid in project_index.items():
        if pid not in project_meta:
            problems.append(f"helper/projects/{name} -> {pid}, which has no meta")
        elif project_meta[pid] != name:
            problems.append(f"helper/projects/{name} -> {pid}, named {project_meta[pid]!r}")
    for pid, name in project_meta.items():
        if name is None:
            problems.append(f"project {pid} has an unreadable meta")
        elif project_index.get(name) != pid:
            problems.append(f"project {pid} ({name}) is not indexed as helper/projects/{name}")
    for (pid, name), sid in service_index.items():
        if pid not in project_meta:
            problems.append(f"service helper {name} -> {sid} of a deleted project {pid}")
        elif (pid, sid) not in service_meta:
            problems.append(f"service helper {pid}/{name} -> {sid}, which has no meta")
        elif service_meta[(pid, sid)] != name:
            problems.append(f"service helper {pid}/{name} -> {sid}, named {service_meta[pid, sid]}")
    for (pid, sid), name in service_meta.items():
        if pid not in project_meta:
            problems.append(f"service {sid} ({name}) of a deleted project {pid}")
        if name is None:
            problems.append(f"service {pid}/{sid} has an unreadable meta")
        elif service_index.get((pid, name)) != sid:
            problems.append(f"service {pid}/{sid} ({name}) has no helper pointing at it")
    for pid, sid, key in service_keys:
        if (pid, sid) not in service_meta:
            problems.append(f"orphan key of a deleted service: {key}")
    for sid, pid in app_owners.items():
        if (pid, sid) not in service_meta:
            problems.append(f"helper/apps/{sid} -> {pid}, which has no service")
    for pid, sid in service_meta:
        if app_owners.get(sid) != pid:
            problems.append(f"service {pid}/{sid} has no helper/apps/{sid} -> {pid}")
    return problems


# ------------------------------------------------------------------------------------------------
# The model.

NAMES = ("a", "b", "c")
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"  # a well-formed id no object ever has
SERVICE_NAMES = ("x", "y", "z")
DESCRIPTIONS = ("", "one", "two")


@attrs.define
class ModelService:
    id: str
    name: str
    replicas: int = 1


@attrs.define
class ModelProject:
    id: str
    name: str
    description: str = ""
    services: dict[str, ModelService] = attrs.Factory(dict)  # by id

    def service(self, ref: str) -> ModelService | None:
        for svc in self.services.values():
            if ref in (svc.id, svc.name):
                return svc
        return None


def _meta(name: str, description: str = "") -> Meta:
    t = datetime.now(UTC).replace(microsecond=0)
    return Meta(name, t, t, description)  # type: ignore[arg-type]


class StoreMachine(RuleBasedStateMachine):
    """Random store calls from two "processes" (two name caches) on one etcd."""

    def __init__(self, endpoint: str) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.etcd = RawEtcd([endpoint])
        self.run(self.etcd.connect())
        self.run(self.etcd.delete_prefix(keys.ROOT))
        self.caches = (NameCache(), NameCache())
        self.model: dict[str, ModelProject] = {}  # by id
        self.seen_pids: list[str] = []  # every project id ever created, deleted ones included
        self.seen_sids: list[str] = []

    def teardown(self) -> None:
        try:
            self.run(self.etcd.close())
        finally:
            self.runner.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def attempt(self, coro: Coroutine[Any, Any, Record]) -> Record | type[Exception]:
        """The record, or the class of the store error the call raised."""
        try:
            return self.run(coro)
        except (NotFound, Conflict) as exc:
            return type(exc)

    # references ---------------------------------------------------------------------------------

    def _projects(self, data: st.DataObject) -> Objects:
        return projects.projects(self.etcd, data.draw(st.sampled_from(self.caches), "process"))

    def _services(self, data: st.DataObject, pid: str) -> Objects:
        cache = data.draw(st.sampled_from(self.caches), "process")
        return services.services(self.etcd, cache, pid)

    def _ref(self, data: st.DataObject, names: tuple[str, ...], ids: list[str], label: str) -> str:
        """A name from the alphabet, an id seen before (maybe deleted), or an unknown id."""
        choices = st.sampled_from(names) | st.just(UNKNOWN_ID)
        if ids:
            choices |= st.sampled_from(ids)
        return data.draw(choices, label)

    def _project(self, ref: str) -> ModelProject | None:
        for project in self.model.values():
            if ref in (project.id, project.name):
                return project
        return None

    def _pid(self, data: st.DataObject) -> str:
        """A project id for the services layer: live, deleted, or never seen."""
        return data.draw(st.sampled_from([*self.model, *self.seen_pids, UNKNOWN_ID]), "pid")

    # projects -----------------------------------------------------------------------------------

    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def create_project(self, data: st.DataObject, name: str) -> None:
        got = self.attempt(self._projects(data).create(name, {"meta": _meta(name)}))
        if self._project(name) is not None:
            assert got is Conflict
            return
        assert isinstance(got, Record), got
        assert got.name == name
        self.model[got.id] = ModelProject(got.id, name)
        self.seen_pids.append(got.id)

    @rule(data=st.data(), new=st.sampled_from(NAMES), description=st.sampled_from(DESCRIPTIONS))
    def update_project(self, data: st.DataObject, new: str, description: str) -> None:
        ref = self._ref(data, NAMES, self.seen_pids, "project")

        def change(cur: Record) -> dict[str, Any]:
            old: Meta = cur.values["meta"]
            return {"meta": Meta(new, old.created, old.updated, description)}  # type: ignore[arg-type]

        got = self.attempt(self._projects(data).update(ref, change))
        project = self._project(ref)
        if project is None:
            assert got is NotFound
            return
        other = self._project(new)
        if other is not None and other is not project:
            assert got is Conflict
            return
        assert isinstance(got, Record), got
        assert (got.id, got.name, got.values["meta"].description) == (project.id, new, description)
        project.name, project.description = new, description

    @rule(data=st.data())
    def delete_project(self, data: st.DataObject) -> None:
        ref = self._ref(data, NAMES, self.seen_pids, "project")
        got = self.attempt(self._projects(data).delete(ref))
        project = self._project(ref)
        if project is None:
            assert got is NotFound
            return
        assert isinstance(got, Record), got
        assert got.id == project.id
        del self.model[project.id]

    @rule(data=st.data())
    def get_project(self, data: st.DataObject) -> None:
        ref = self._ref(data, NAMES, self.seen_pids, "project")
        got = self.attempt(self._projects(data).get(ref))
        project = self._project(ref)
        if project is None:
            assert got is NotFound
            return
        assert isinstance(got, Record), got
        assert (got.id, got.name) == (project.id, project.name)

    # services -----------------------------------------------------------------------------------

    @rule(data=st.data(), name=st.sampled_from(SERVICE_NAMES))
    def create_service(self, data: st.DataObject, name: str) -> None:
        pid = self._pid(data)
        parts = {
            "meta": _meta(name),
            "config": ServiceConfig(),
            "source": None,
            "domains": {},
            "image": None,
        }
        got = self.attempt(self._services(data, pid).create(name, parts))
        project = self.model.get(pid)
        if project is None:
            assert got is NotFound
            return
        if project.service(name) is not None:
            assert got is Conflict
            return
        assert isinstance(got, Record), got
        project.services[got.id] = ModelService(got.id, name)
        self.seen_sids.append(got.id)

    @rule(
        data=st.data(),
        new=st.sampled_from(SERVICE_NAMES),
        replicas=st.integers(min_value=0, max_value=2),
    )
    def update_service(self, data: st.DataObject, new: str, replicas: int) -> None:
        pid = self._pid(data)
        ref = self._ref(data, SERVICE_NAMES, self.seen_sids, "service")

        def change(cur: Record) -> dict[str, Any]:
            old: Meta = cur.values["meta"]
            config: ServiceConfig = cur.values["config"]
            return {
                "meta": Meta(new, old.created, old.updated, old.description),  # type: ignore[arg-type]
                "config": attrs.evolve(config, replicas=replicas),
            }

        got = self.attempt(self._services(data, pid).update(ref, change))
        project = self.model.get(pid)
        svc = project.service(ref) if project else None
        if project is None or svc is None:
            assert got is NotFound
            return
        other = project.service(new)
        if other is not None and other is not svc:
            assert got is Conflict
            return
        assert isinstance(got, Record), got
        assert (got.id, got.name, got.values["config"].replicas) == (svc.id, new, replicas)
        svc.name, svc.replicas = new, replicas

    @rule(data=st.data())
    def delete_service(self, data: st.DataObject) -> None:
        pid = self._pid(data)
        ref = self._ref(data, SERVICE_NAMES, self.seen_sids, "service")
        got = self.attempt(self._services(data, pid).delete(ref))
        project = self.model.get(pid)
        svc = project.service(ref) if project else None
        if project is None or svc is None:
            assert got is NotFound
            return
        assert isinstance(got, Record), got
        assert got.id == svc.id
        del project.services[svc.id]

    @rule(data=st.data())
    def get_service(self, data: st.DataObject) -> None:
        pid = self._pid(data)
        ref = self._ref(data, SERVICE_NAMES, self.seen_sids, "service")
        got = self.attempt(self._services(data, pid).get(ref))
        project = self.model.get(pid)
        svc = project.service(ref) if project else None
        if svc is None:
            assert got is NotFound
            return
        assert isinstance(got, Record), got
        assert (got.id, got.name) == (svc.id, svc.name)

    @rule(data=st.data())
    def list_projects(self, data: st.DataObject) -> None:
        page = self.run(self._projects(data).list(page=1, per_page=50))
        assert [(r.id, r.name) for r in page.records] == sorted(
            ((p.id, p.name) for p in self.model.values()), key=lambda item: item[1]
        )
        assert page.total == len(self.model)

    # checks -------------------------------------------------------------------------------------

    def _expected(self) -> dict[str, Any]:
        """Every key the model implies, with its value (helpers) or meta name/replicas."""
        out: dict[str, Any] = {}
        for project in self.model.values():
            pid = project.id
            out[keys.project_name(project.name)] = pid
            out[keys.project_meta(pid)] = (project.name, project.description)
            for svc in project.services.values():
                out[keys.service_name(pid, svc.name)] = svc.id
                out[keys.app_owner(svc.id)] = pid
                out[keys.service_part(pid, svc.id, "meta")] = svc.name
                out[keys.service_part(pid, svc.id, "config")] = svc.replicas
                out[keys.service_part(pid, svc.id, "domains")] = {}
        return out

    def _actual(self, tree: Mapping[str, bytes]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, raw in tree.items():
            value = json.loads(raw) if not key.startswith(keys.HELPER) else raw.decode()
            if key.startswith(keys.PROJECTS) and key.endswith("/meta"):
                rest = key[len(keys.PROJECTS) :].split("/")
                is_project = len(rest) == 2
                value = (value["name"], value["description"]) if is_project else value["name"]
            elif key.endswith("/config"):
                value = value["replicas"]
            out[key] = value
        return out

    @invariant()
    def tree_matches_model_and_is_consistent(self) -> None:
        tree = {kv.key: kv.value for kv in self.run(self.etcd.range(keys.ROOT)).kvs}
        assert tree_problems(tree) == []
        assert self._actual(tree) == self._expected()

    @invariant()
    def every_name_resolves_right_in_both_processes(self) -> None:
        """Look every name up through both caches: a stale name -> id hint must never show."""

        async def lookup(objects: Objects, ref: str) -> tuple[str, str] | None:
            try:
                record = await objects.get(ref)
            except NotFound:
                return None
            return record.id, record.name

        calls: list[Coroutine[Any, Any, tuple[str, str] | None]] = []
        expected: list[tuple[str, str] | None] = []
        for cache in self.caches:
            for name in NAMES:
                calls.append(lookup(projects.projects(self.etcd, cache), name))
                project = self._project(name)
                expected.append((project.id, name) if project else None)
            for project in self.model.values():
                for name in SERVICE_NAMES:
                    calls.append(lookup(services.services(self.etcd, cache, project.id), name))
                    svc = project.service(name)
                    expected.append((svc.id, name) if svc else None)

        async def run_all() -> list[tuple[str, str] | None]:
            return list(await asyncio.gather(*calls))

        assert self.run(run_all()) == expected


def test_store_matches_model(etcd_server: EmbeddedEtcd) -> None:
    if not etcd_server.running:
        etcd_server.start()
    run_state_machine_as_test(
        lambda: StoreMachine(etcd_server.endpoint),
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_tree_problems_finds_orphans_and_mismatches() -> None:
    """The checker itself: a consistent tree passes, each kind of damage is reported."""
    pid, sid = new_id(), new_id()
    good = {
        keys.project_name("a"): pid.encode(),
        keys.project_meta(pid): b'{"name":"a"}',
        keys.service_name(pid, "x"): sid.encode(),
        keys.service_part(pid, sid, "meta"): b'{"name":"x"}',
        keys.service_part(pid, sid, "config"): b"{}",
        keys.container(pid, sid, "c1"): b"{}",
        keys.app_owner(sid): pid.encode(),
    }
    assert tree_problems(good) == []
    damaged: list[dict[str, bytes]] = [
        {k: v for k, v in good.items() if k != keys.project_name("a")},
        {k: v for k, v in good.items() if k != keys.project_meta(pid)},
        {k: v for k, v in good.items() if k != keys.service_name(pid, "x")},
        {k: v for k, v in good.items() if k != keys.service_part(pid, sid, "meta")},
        {**good, keys.project_meta(pid): b'{"name":"b"}'},
        {**good, keys.service_part(pid, new_id(), "config"): b"{}"},
        {**good, keys.service_name(new_id(), "x"): sid.encode()},
        {**good, "/lastbackend/stray": b""},
        {k: v for k, v in good.items() if k != keys.app_owner(sid)},
        {**good, keys.app_owner(new_id()): pid.encode()},
    ]
    for tree in damaged:
        assert tree_problems(tree), tree
