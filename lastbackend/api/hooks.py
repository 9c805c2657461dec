"""``POST /api/hooks/{vendor}``: push webhooks from GitHub, GitLab and Bitbucket start builds.

Providers cannot send our bearer token, so this route is exempt from it (``middlewares.check_auth``)
and the webhook secret stored with the vendor is its only credential:

- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``;
- GitLab: ``X-Gitlab-Token: <the secret itself>``;
- Bitbucket Cloud: ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``, what it sends
  for a webhook created with a secret (the OAuth consumer has no signature of its own).

Every comparison is constant-time, and the body is checked before it is parsed. A vendor with no
webhook secret refuses every hook (401), so a hook is never taken on trust. A wrong or missing
signature is a 401 that writes nothing. Every refusal is the same 401 with the same text
(:data:`REFUSED`), whatever the reason (an unknown vendor name, a vendor not connected or without
a secret, a missing or wrong signature), so a caller cannot probe which vendors are connected;
the reason goes to the log.

A verified push that names its delivery (``X-GitHub-Delivery``, ``X-Gitlab-Event-UUID``,
``X-Request-UUID``) is taken once: a replay of the same delivery queues nothing new and answers
with the builds the first copy queued, marked ``"replayed": true``
(``lastbackend.store.deliveries``).

A verified push names a repository and a branch; every service (in any project) and image whose
``source`` is that repository on this vendor's hub and that branch gets a queued build with the
pushed commit, its message's first line and its author. Tag pushes and branch deletions start
nothing, and neither do other events (``ping`` and the like): 200 with the reason. A push answers
202 with the builds it created, possibly none.

The parsers below are pure functions of (headers, payload), tested on the providers' documented
payload shapes in ``tests/unit/test_hook_payloads.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

import attrs
from aiohttp import web

from lastbackend.api.errors import ApiError
from lastbackend.api.http import JSON_TYPE, doc, is_json_type, json_response, shown
from lastbackend.api.state import STATE
from lastbackend.logsetup import log
from lastbackend.model.platform import ServiceSource
from lastbackend.model.vendors import Vendor
from lastbackend.store.builds import Builds, NoSource, Target
from lastbackend.store.deliveries import Deliveries, Seen, is_delivery_id
from lastbackend.store.etcd import Etcd
from lastbackend.store.objects import NotFound
from lastbackend.store.vendors import subscribers

routes = web.RouteTableDef()

ROUTE = "/api/hooks/{vendor}"
HOOK_VENDORS = ("github", "gitlab", "bitbucket")
EVENT_HEADERS = {"github": "X-GitHub-Event", "gitlab": "X-Gitlab-Event", "bitbucket": "X-Event-Key"}
SIGNATURE_HEADERS = {
    "github": "X-Hub-Signature-256",
    "gitlab": "X-Gitlab-Token",
    "bitbucket": "X-Hub-Signature",
}
DELIVERY_HEADERS = {
    "github": "X-GitHub-Delivery",
    "gitlab": "X-Gitlab-Event-UUID",
    "bitbucket": "X-Request-UUID",
}
REFUSED = (
    "the webhook is not verified: POST it to /api/hooks/<github|gitlab|bitbucket>, for a vendor "
    "connected with a webhook_secret, signed with that secret (GitHub: X-Hub-Signature-256, "
    "Bitbucket: X-Hub-Signature, GitLab: X-Gitlab-Token)"
)
"""The one answer to every refused hook: a caller learns nothing about which vendors exist."""
PUSH_EVENTS = {"github": "push", "gitlab": "Push Hook", "bitbucket": "repo:push"}
ZERO_SHA = "0" * 40
BRANCH_REF = "refs/heads/"


@attrs.frozen
class Push:
    """One branch moved to a commit: what a push payload says, vendor-neutral."""

    owner: str
    repo: str
    branch: str
    commit: str
    message: str = ""
    committer: str = ""


class PayloadError(ValueError):
    """A verified payload without a field a push must have: 422 naming it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")


# verification -----------------------------------------------------------------------------------


class Refused(ApiError):
    """A hook that does not verify: the answer is always :data:`REFUSED`; ``str()`` of it is the
    real reason, for the log (and tests), never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(401, REFUSED)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _hmac_header(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify(vendor: str, secret: str, headers: Mapping[str, str], raw: bytes) -> None:
    """Raise :class:`Refused` unless the request carries ``secret``'s signature.

    The signature is computed and compared even with no secret to check it against, so a
    vendor that is not connected takes as long to refuse as a wrong signature.
    """
    name = SIGNATURE_HEADERS[vendor]
    given = headers.get(name, "").strip()
    stand_in = secret or os.urandom(16).hex()  # no secret: the same work, and never a match
    expected = stand_in if vendor == "gitlab" else _hmac_header(stand_in, raw)
    matched = hmac.compare_digest(given.encode(), expected.encode())
    if not secret:
        raise Refused(f"no webhook secret configured for {vendor}: set webhook_secret")
    if not given:
        raise Refused(f"{name} is missing: the webhook must be set up with the secret")
    if not matched:
        raise Refused(f"{name} does not match the webhook secret")


def sign(secret: str, raw: bytes) -> str:
    """The ``sha256=<hex>`` header value GitHub and Bitbucket send: for tests and replays."""
    return _hmac_header(secret, raw)


# payloads ---------------------------------------------------------------------------------------


def _get(payload: Any, path: str, *, required: bool = True) -> Any:
    """``payload["a"]["b"]`` for ``"a.b"``; a missing or null field is a :class:`PayloadError`
    when required, else ``None``."""
    value = payload
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            if required:
                raise PayloadError(path, "is required in a push payload")
            return None
    return value


def _text(payload: Any, path: str, *, required: bool = True) -> str:
    value = _get(payload, path, required=required)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PayloadError(path, "must be a string")
    return value


def _subject(message: str) -> str:
    """A commit message's first line: what the build object's ``commitMessage`` shows."""
    return message.strip().split("\n", 1)[0].strip()


def _split(full_name: str, field: str) -> tuple[str, str]:
    owner, _, repo = full_name.rpartition("/")
    if not owner or not repo:
        raise PayloadError(field, f"must be '<owner>/<repo>', got {full_name!r}")
    return owner, repo


def _branch(ref: str) -> str | None:
    return ref[len(BRANCH_REF) :] if ref.startswith(BRANCH_REF) else None


def github_pushes(payload: Any) -> list[Push]:
    branch = _branch(_text(payload, "ref"))
    after = _text(payload, "after", required=False)
    if branch is None or _get(payload, "deleted", required=False) is True or after == ZERO_SHA:
        return []  # a tag, or a branch deleted: nothing to build
    repo = _text(payload, "repository.name")
    owner = _text(payload, "repository.owner.login", required=False) or _text(
        payload, "repository.owner.name", required=False
    )
    if not owner:
        owner, _ = _split(_text(payload, "repository.full_name"), "repository.full_name")
    head = _get(payload, "head_commit", required=False) or {}
    commit = _text(head, "id", required=False) or after
    if not commit:
        raise PayloadError("after", "is required in a push payload")
    committer = (
        _text(head, "author.name", required=False)
        or _text(payload, "pusher.name", required=False)
        or _text(payload, "sender.login", required=False)
    )
    message = _subject(_text(head, "message", required=False))
    return [Push(owner, repo, branch, commit, message, committer)]


def gitlab_pushes(payload: Any) -> list[Push]:
    branch = _branch(_text(payload, "ref"))
    commit = _text(payload, "checkout_sha", required=False)
    if branch is None or not commit or commit == ZERO_SHA:
        return []  # a tag, or a branch deleted (GitLab sends checkout_sha null)
    field = "project.path_with_namespace"
    owner, repo = _split(_text(payload, field), field)
    commits = _get(payload, "commits", required=False) or []
    if not isinstance(commits, list):
        raise PayloadError("commits", "must be an array")
    head = next((c for c in commits if isinstance(c, dict) and c.get("id") == commit), {})
    committer = _text(head, "author.name", required=False) or _text(
        payload, "user_name", required=False
    )
    message = _subject(_text(head, "message", required=False))
    return [Push(owner, repo, branch, commit, message, committer)]


def _author(raw: str) -> str:
    """``"Ada Lovelace <ada@example.com>"`` -> ``"Ada Lovelace"``."""
    return raw.split("<", 1)[0].strip() or raw.strip()


def bitbucket_pushes(payload: Any) -> list[Push]:
    field = "repository.full_name"
    owner, repo = _split(_text(payload, field), field)
    changes = _get(payload, "push.changes")
    if not isinstance(changes, list):
        raise PayloadError("push.changes", "must be an array")
    out = []
    for i, change in enumerate(changes):
        new = change.get("new") if isinstance(change, dict) else None
        if not isinstance(new, dict) or new.get("type", "branch") != "branch":
            continue  # a branch deleted (new is null), or a tag
        where = f"push.changes[{i}].new"
        branch = _text(new, "name", required=False)
        commit = _text(new, "target.hash", required=False)
        if not branch or not commit:
            raise PayloadError(f"{where}.{'target.hash' if branch else 'name'}", "is required")
        committer = (
            _text(new, "target.author.user.display_name", required=False)
            or _author(_text(new, "target.author.raw", required=False))
            or _text(payload, "actor.display_name", required=False)
        )
        message = _subject(_text(new, "target.message", required=False))
        out.append(Push(owner, repo, branch, commit, message, committer))
    return out


PARSERS = {"github": github_pushes, "gitlab": gitlab_pushes, "bitbucket": bitbucket_pushes}


def event_of(vendor: str, headers: Mapping[str, str]) -> str:
    """The event a request says it carries; a 400 without the provider's event header."""
    name = EVENT_HEADERS[vendor]
    value = headers.get(name, "").strip()
    if not value:
        raise ApiError(400, f"{name} is missing: this is not a {vendor} webhook request")
    return value


def parse(vendor: str, headers: Mapping[str, str], raw: bytes) -> tuple[str, list[Push]]:
    """The event name and, for a push event, the branches it moved."""
    event = event_of(vendor, headers)
    if event != PUSH_EVENTS[vendor]:
        return event, []
    given = headers.get("Content-Type")
    if given is not None and not is_json_type(given):
        raise ApiError(
            415,
            f"header Content-Type: must be {JSON_TYPE}, got {shown(given)}: set the webhook's "
            "content type to application/json",
        )
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "body: must be a JSON object")
    try:
        return event, PARSERS[vendor](payload)
    except PayloadError as exc:
        raise ApiError(422, str(exc)) from None


# matching ---------------------------------------------------------------------------------------


def matches(vendor: Vendor, push: Push, source: ServiceSource) -> bool:
    """Whether a push moved ``source``: same hub (this vendor), repository and branch.

    Owner and repository compare case-insensitively, as the providers resolve them; branches
    are case-sensitive in git.
    """
    return (
        vendor.serves(source.hub)
        and source.owner.lower() == push.owner.lower()
        and source.repo.lower() == push.repo.lower()
        and source.branch == push.branch
    )


@routes.post(ROUTE)
@doc(
    "A push webhook from github, gitlab or bitbucket: queue a build of every matching service "
    "and image (signed with the vendor's webhook_secret; no bearer token)",
    response="HookResult",
    status=202,
)
async def hook(request: web.Request) -> web.Response:
    name = request.match_info["vendor"]
    state = request.app[STATE]
    try:
        vendor, raw = await _verified(request, name)
    except Refused as exc:
        log.info("push hook refused", vendor=shown(name), reason=exc.reason)
        raise
    event, pushes = parse(name, request.headers, raw)
    if event != PUSH_EVENTS[name]:
        return json_response({"builds": [], "ignored": f"{event!r} is not a push event"})
    delivery = _delivery(name, request.headers) if pushes else None
    deliveries = Deliveries(state.etcd)
    claim = None
    if delivery is not None:
        first = await deliveries.seen(name, delivery)
        taken = await deliveries.claim(name, delivery) if first is None else first
        if isinstance(taken, Seen):
            return _replayed(name, delivery, taken)
        claim = taken
    created = await _queue(state.etcd, vendor, name, pushes)
    if claim is not None:
        await deliveries.record(claim, created)
    return json_response({"builds": created}, status=202)


async def _verified(request: web.Request, name: str) -> tuple[Vendor, bytes]:
    """The connected vendor and the raw body of a hook whose signature verifies; else
    :class:`Refused`, the same for every reason."""
    if name not in HOOK_VENDORS:
        raise Refused(f"no hooks for {name!r}: the hook vendors are {', '.join(HOOK_VENDORS)}")
    raw = await request.read()
    vendors = request.app[STATE].vendors
    try:
        vendor = (await vendors.get(name)).vendor
    except NotFound:
        with contextlib.suppress(Refused):
            verify(name, "", request.headers, raw)  # the same work as for a connected vendor
        raise Refused(f"{name} is not connected: no webhook secret configured") from None
    verify(name, vendors.webhook_secret(vendor), request.headers, raw)
    return vendor, raw


def _delivery(vendor: str, headers: Mapping[str, str]) -> str | None:
    """The delivery's name, if the host sent one (older GitLab does not): 400 if it cannot be."""
    header = DELIVERY_HEADERS[vendor]
    raw = headers.get(header, "").strip()
    if not raw:
        return None
    if not is_delivery_id(raw):
        raise ApiError(
            400,
            f"header {header}: {shown(raw)} is not a delivery id (1 to 128 of A-Z a-z 0-9 . _ : -)",
        )
    return raw


def _replayed(vendor: str, delivery: str, seen: Seen) -> web.Response:
    if seen.builds is None:
        raise ApiError(
            409,
            f"delivery {delivery!r} is being handled by the copy that came first; its builds are "
            "queued when it ends",
        )
    log.info("push hook replayed", vendor=vendor, delivery=delivery, builds=len(seen.builds))
    return json_response({"builds": seen.builds, "replayed": True}, status=202)


async def _queue(etcd: Etcd, vendor: Vendor, name: str, pushes: list[Push]) -> list[dict[str, Any]]:
    """A queued build of every subscriber each push moved: what the answer lists."""
    found = await subscribers(etcd) if pushes else []
    builds = Builds(etcd)
    created: list[dict[str, Any]] = []
    for push in pushes:
        for sub in found:
            if not matches(vendor, push, sub.source):
                continue
            try:
                number = await builds.create(
                    Target(sub.kind, sub.id, sub.project),  # type: ignore[arg-type]
                    commit=push.commit,
                    commit_message=push.message,
                    committer=push.committer,
                )
            except (NotFound, NoSource):
                continue  # deleted, or its source removed, since it was read
            entry: dict[str, Any] = {sub.kind: sub.id, "number": number}
            if sub.kind == "service":
                entry["project"] = sub.project
            created.append(entry)
        log.info(
            "push hook",
            vendor=name,
            repo=f"{push.owner}/{push.repo}",
            branch=push.branch,
            commit=push.commit,
            builds=len(created),
        )
    return created
