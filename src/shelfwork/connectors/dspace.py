"""Client for the DSpace 7 REST API (`/server/api`), as shelfwork's koha-dspace pipeline uses it.

It follows the contract notes (koha-dspace-contracts.md, part B): CSRF token and cookie on every
write, a Bearer JWT renewed before it expires or after a 401, items created through a submission
(workspace item, metadata by form section, upload, license, deposit) or directly by an
administrator (item, ORIGINAL bundle, bitstream), and the stored file's MD5 checked against the
local one. Creation reports each remote stage to a `progress` callback so a job can checkpoint and
later `resume` without creating a second workspace item or item.

Secrets stay inside this object: the password and the JWT are never put in messages or logs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx

from ..errors import ShelfworkError
from ..redaction import redact_url
from . import (
    AuthFailed,
    RemoteError,
    RemoteRefused,
    error_for,
    tls_context,
    transport_error,
)

log = logging.getLogger(__name__)

SYSTEM = "DSpace"
XSRF_HEADER = "DSPACE-XSRF-TOKEN"
CLIENT_XSRF_HEADER = "X-XSRF-TOKEN"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: re-login when the JWT has less than this many seconds left
RENEW_MARGIN = 60.0
#: a metadata key as DSpace spells it: schema.element[.qualifier]
FIELD_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9]*\.[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)?$")
SUBMISSION_STAGES = ("workspace", "metadata", "upload", "license", "deposit")
ADMIN_STAGES = ("item", "bundle", "bitstream")
MAX_SEARCH_PAGES = 1000
CHUNK = 1 << 20

Progress = Callable[[str, dict[str, Any]], None]
#: what is uploaded: a file's path, or the file itself opened for reading (read from its start,
#: left open), so that a caller that checked an open file uploads that very file
Upload = Path | BinaryIO


class ChecksumMismatch(RemoteError):
    """DSpace stored a file whose MD5 is not the local file's: the copy is corrupt.

    `file` is the file's name, not its path: the message may reach a cataloguer (956$z)."""

    def __init__(self, file: str, expected: str, got: str, *, bitstream: str | None) -> None:
        self.file = file
        self.expected = expected
        self.got = got
        self.bitstream = bitstream
        where = f" (bitstream {bitstream})" if bitstream else ""
        super().__init__(SYSTEM, f"MD5 of {file} is {expected} locally but {got} in DSpace{where}")


class BadResume(ShelfworkError):
    """A `resume` checkpoint does not belong to this kind of creation or lacks its ids."""


@dataclass(frozen=True)
class Item:
    uuid: str
    name: str | None
    handle: str | None
    in_archive: bool
    withdrawn: bool
    metadata: dict[str, list[str]]

    @property
    def uri(self) -> str | None:
        """The canonical handle URL DSpace wrote at archive time (B4): what 856$u should hold.

        HandleIdentifierProvider.populateHandleMetadata appends it to dc.identifier.uri after any
        value already there (the stock form has a URI identifier), so the one ending in the
        handle is preferred."""
        uris = self.metadata.get("dc.identifier.uri") or []
        if self.handle:
            own = [u for u in uris if u.rstrip("/").endswith(f"/{self.handle}")]
            if own:
                return own[0]
        return uris[0] if uris else None


@dataclass(frozen=True)
class Bitstream:
    uuid: str
    name: str
    size: int
    md5: str | None


@dataclass(frozen=True)
class Deposit:
    item: Item
    bitstream: Bitstream
    in_workflow: bool
    workspace_id: int | None


@dataclass(frozen=True)
class InProgress:
    """Where an item that is not archived waits: in a review workflow, or in its submitter's
    workspace (never deposited, or sent back by a reviewer)."""

    stage: Literal["workflow", "workspace"]
    id: int  # the workflow or workspace item id


@dataclass(frozen=True)
class Submission:
    """One of this account's own items found by search, at whatever stage it is."""

    item: Item
    stage: Literal["archived", "workflow", "workspace"]
    id: int | None  # the workflow or workspace item id; None once archived


@dataclass(frozen=True)
class RequiredField:
    """A field the submission form makes mandatory: one of `keys` (a qualdrop field's qualified
    keys) must have a value, or DSpace keeps the workspace item with an error."""

    keys: tuple[str, ...]
    message: str | None  # the form's <required> text, when DSpace shows one

    def describe(self) -> str:
        key = self.keys[0] if len(self.keys) == 1 else " or ".join(self.keys)
        return f"{key} ({self.message})" if self.message else key


@dataclass(frozen=True)
class SubmissionForm:
    """What a collection's submission accepts: each metadata key's form section (B2a 1), and the
    fields it requires."""

    owner: dict[str, str]
    required: tuple[RequiredField, ...]

    def missing(self, metadata: dict[str, list[str]]) -> list[RequiredField]:
        return [
            f
            for f in self.required
            if not any(v.strip() for k in f.keys for v in metadata.get(k, []))
        ]


@dataclass(frozen=True)
class WorkspaceInProgress:
    id: int
    collection: str | None
    empty: bool
    last_modified: str | None


def workspace_in_progress(data: dict[str, Any]) -> WorkspaceInProgress:
    """Whether a workspace item is still as created: no metadata value in any section and no file.
    Optional steps show data of their own in a fresh item (itemAccessConditions: discoverable and
    an empty list; identifiers), so only metadata keys count."""
    sections = data.get("sections") or {}
    collection = sections.get("collection")
    filled = any(sections_metadata(sections).values())
    files = ((sections.get("upload") or {}).get("files")) or []
    return WorkspaceInProgress(
        id=int(data["id"]),
        collection=collection if isinstance(collection, str) else None,
        empty=not filled and not files,
        last_modified=data.get("lastModified"),
    )


def item_from_json(data: dict[str, Any]) -> Item:
    metadata = {
        key: [str(v.get("value", "")) for v in values if isinstance(v, dict)]
        for key, values in (data.get("metadata") or {}).items()
        if isinstance(values, list)
    }
    return Item(
        uuid=str(data.get("uuid") or data.get("id")),
        name=data.get("name"),
        handle=data.get("handle"),
        in_archive=bool(data.get("inArchive")),
        withdrawn=bool(data.get("withdrawn")),
        metadata=metadata,
    )


#: the provenance note XmlWorkflowServiceImpl.sendWorkflowItemBackSubmission adds (7_x and 8_x):
#: "<step> Rejected by <name> (<email>), reason: <reason> on <date> (GMT) "
REJECTED = re.compile(r"Rejected by (?P<by>.+?), reason: (?P<reason>.*) on \S+ \(GMT\)\s*$", re.S)


def rejection_reason(item: Item) -> str | None:
    """The reason of the latest reviewer rejection in the item's provenance, if DSpace shows it:
    provenance is hidden (metadata.hide.dc.description.provenance) from all but administrators and
    those who may edit the item, which the submitter may again once the item is sent back."""
    for note in reversed(item.metadata.get("dc.description.provenance", [])):
        found = REJECTED.search(note)
        if found:
            return found.group("reason").strip() or None
    return None


def sections_metadata(sections: dict[str, Any]) -> dict[str, list[str]]:
    """Field -> values of a workspace or workflow item's describe sections."""
    merged: dict[str, list[str]] = {}
    for name, section in sections.items():
        if name in ("upload", "license", "collection") or not isinstance(section, dict):
            continue
        for key, values in section.items():
            # a describe section maps metadata keys to values; other steps' data do not
            if FIELD_KEY.match(key) and isinstance(values, list):
                merged.setdefault(key, []).extend(
                    str(v.get("value", "")) for v in values if isinstance(v, dict)
                )
    return merged


def bitstream_from_json(data: dict[str, Any], fallback_name: str = "") -> Bitstream:
    checksum = data.get("checkSum") or {}
    name = data.get("name")
    if not name:
        titles = (data.get("metadata") or {}).get("dc.title") or [{}]
        name = titles[0].get("value") or fallback_name
    algorithm = str(checksum.get("checkSumAlgorithm", "MD5")).upper()
    return Bitstream(
        uuid=str(data.get("uuid") or data.get("id")),
        name=str(name),
        size=int(data.get("sizeBytes") or 0),
        md5=str(checksum["value"]).lower()
        if checksum.get("value") and algorithm == "MD5"
        else None,
    )


def equal_value(metadata: dict[str, list[str]], field: str, wanted: str) -> bool:
    """Whether a value of `field` equals `wanted` (already stripped and casefolded)."""
    return any(v.strip().casefold() == wanted for v in metadata.get(field, []))


def file_md5(file: Upload) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with _reading(file) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _reading(file: Upload) -> Iterator[BinaryIO]:
    """`file` read from its start: a path is opened here, an open file is rewound (and left
    open for its owner to close)."""
    if isinstance(file, str | Path):
        with open(file, "rb") as handle:
            yield handle
    else:
        file.seek(0)
        yield file


def _size_of(file: Upload) -> int:
    if isinstance(file, str | Path):
        return os.stat(file).st_size
    return os.fstat(file.fileno()).st_size


def _name_of(file: Upload) -> str:
    """The file as messages name it: its name, never its folder (they may reach a cataloguer)."""
    name = file if isinstance(file, str | Path) else getattr(file, "name", None)
    return Path(name).name if isinstance(name, str | Path) else "the file"


def lucene_phrase(value: str) -> str:
    """`value` quoted for a Lucene phrase: backslashes and double quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (only to renew in time)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def is_csrf_failure(response: httpx.Response) -> bool:
    if response.status_code != 403:
        return False
    try:
        return "csrf" in response.text.lower()
    except Exception:
        return False


def value_objects(values: list[str]) -> list[dict[str, Any]]:
    return [{"value": v, "language": None, "authority": None, "confidence": -1} for v in values]


class DSpace:
    """One authenticated session with a DSpace 7 server; not shared between threads."""

    def __init__(
        self,
        api_url: str,
        user: str,
        password: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.user = user
        self._password = password
        self._client = httpx.Client(
            timeout=timeout, transport=transport, follow_redirects=False, verify=tls_context()
        )
        self._csrf: str | None = None
        self._jwt: str | None = None
        self._jwt_exp: float | None = None

    def __repr__(self) -> str:
        return f"DSpace({redact_url(self.api_url)!r}, user={self.user!r})"

    def __enter__(self) -> DSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ authentication (B1)

    def login(self) -> None:
        """Fetch a CSRF token, log in with the password, keep the Bearer token."""
        self._jwt = None
        self._jwt_exp = None
        self._fetch_csrf()
        url = f"{self.api_url}/authn/login"
        response: httpx.Response | None = None
        for attempt in range(2):
            try:
                response = self._client.post(
                    url,
                    data={"user": self.user, "password": self._password},
                    headers={CLIENT_XSRF_HEADER: self._csrf or ""},
                )
            except httpx.HTTPError as exc:
                raise transport_error(SYSTEM, exc, f"login as {self.user}") from exc
            self._track_csrf(response)
            if is_csrf_failure(response) and attempt == 0:
                if XSRF_HEADER not in response.headers:
                    self._fetch_csrf()
                continue
            break
        assert response is not None
        if response.status_code in (401, 403):
            raise AuthFailed(
                SYSTEM,
                f"login refused for user {self.user}",
                method="POST",
                url=url,
                status=response.status_code,
                body=response.text,
            )
        if response.status_code != 200:
            raise error_for(SYSTEM, response, f"login as {self.user}")
        scheme, _, token = response.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed(
                SYSTEM, "login answered 200 without a Bearer token", method="POST", url=url
            )
        self._jwt = token.strip()
        self._jwt_exp = jwt_expiry(self._jwt)
        log.debug("logged in to %s as %s", redact_url(self.api_url), self.user)

    def _fetch_csrf(self) -> None:
        url = f"{self.api_url}/security/csrf"
        try:
            response = self._client.get(url)
        except httpx.HTTPError as exc:
            raise transport_error(SYSTEM, exc, "fetch the CSRF token") from exc
        if response.status_code not in (200, 204):
            raise error_for(SYSTEM, response, "fetch the CSRF token")
        if not self._track_csrf(response):
            raise RemoteRefused(
                SYSTEM,
                f"no {XSRF_HEADER} header in the answer",
                method="GET",
                url=url,
                status=response.status_code,
            )

    def _track_csrf(self, response: httpx.Response) -> bool:
        """B1: take the newest token from any response that carries one (the cookie jar keeps
        the matching DSPACE-XSRF-COOKIE)."""
        token = response.headers.get(XSRF_HEADER)
        if token:
            self._csrf = token
        return bool(token)

    def _ensure_login(self) -> None:
        if self._jwt is None:
            self.login()
        elif self._jwt_exp is not None and self._jwt_exp - time.time() < RENEW_MARGIN:
            log.debug("JWT for %s expires within %s s; logging in again", self.user, RENEW_MARGIN)
            self.login()

    def _request(
        self,
        method: str,
        url: str,
        *,
        message: str,
        ok: tuple[int, ...] = (200,),
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        files: Callable[[ExitStack], dict[str, Any]] | None = None,
        missing_ok: bool = False,
    ) -> httpx.Response | None:
        """One API call with the session rules: re-login once on 401, refresh the CSRF token
        once on a CSRF 403. `files` opens the multipart parts afresh for every attempt."""
        if not url.startswith("http"):
            url = f"{self.api_url}{url}"
        relogged = refreshed = False
        while True:
            self._ensure_login()
            sent = dict(headers or {})
            sent["Authorization"] = f"Bearer {self._jwt}"
            if method in MUTATING:
                if self._csrf is None:
                    self._fetch_csrf()
                sent[CLIENT_XSRF_HEADER] = self._csrf or ""
            with ExitStack() as stack:
                try:
                    response = self._client.request(
                        method,
                        url,
                        params=params,
                        json=json_body,
                        content=content,
                        files=files(stack) if files else None,
                        headers=sent,
                    )
                except httpx.HTTPError as exc:
                    raise transport_error(SYSTEM, exc, message) from exc
            self._track_csrf(response)
            status = response.status_code
            if status == 401 and not relogged:
                relogged = True
                log.debug("401 from %s %s; logging in again", method, url)
                self._jwt = None
                continue
            if is_csrf_failure(response) and not refreshed:
                refreshed = True
                if XSRF_HEADER not in response.headers:
                    self._fetch_csrf()
                continue
            if status in ok:
                return response
            if status == 404 and missing_ok:
                return None
            raise error_for(SYSTEM, response, message)

    def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, url, **kwargs)
        assert response is not None
        return self._json_of(response, kwargs.get("message"))

    @staticmethod
    def _json_of(response: httpx.Response, message: str | None) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise RemoteRefused(
                SYSTEM,
                f"{message}: answer is not JSON",
                method=response.request.method,
                url=str(response.request.url),
                status=response.status_code,
                body=response.text,
            ) from exc
        if not isinstance(data, dict):
            raise RemoteRefused(
                SYSTEM, f"{message}: unexpected JSON", url=str(response.request.url)
            )
        return data

    # ------------------------------------------------------------------ reading (B3, B4)

    def item(self, uuid: str) -> Item | None:
        """The item, or None when DSpace answers 404 (B3: gone)."""
        response = self._request(
            "GET", f"/core/items/{uuid}", message=f"read item {uuid}", missing_ok=True
        )
        return item_from_json(response.json()) if response is not None else None

    def bitstream(self, uuid: str) -> Bitstream | None:
        response = self._request(
            "GET", f"/core/bitstreams/{uuid}", message=f"read bitstream {uuid}", missing_ok=True
        )
        return bitstream_from_json(response.json()) if response is not None else None

    def bitstream_md5(self, uuid: str) -> str | None:
        found = self.bitstream(uuid)
        return found.md5 if found else None

    def verify(self, bitstream: Bitstream, file: Upload, local_md5: str | None = None) -> None:
        """Raise ChecksumMismatch unless DSpace's MD5 of `bitstream` is the local file's."""
        expected = local_md5 or file_md5(file)
        if (bitstream.md5 or "").lower() != expected:
            raise ChecksumMismatch(
                bitstream.name or _name_of(file),
                expected,
                bitstream.md5 or "none",
                bitstream=bitstream.uuid,
            )

    def item_bitstreams(self, uuid: str, bundle: str = "ORIGINAL") -> list[Bitstream]:
        bundles = self._json(
            "GET", f"/core/items/{uuid}/bundles", message=f"list bundles of {uuid}"
        )
        found = [
            b
            for b in (bundles.get("_embedded") or {}).get("bundles", [])
            if b.get("name") == bundle
        ]
        result: list[Bitstream] = []
        for entry in found:
            listed = self._json(
                "GET",
                f"/core/bundles/{entry['uuid']}/bitstreams",
                message=f"list bitstreams of bundle {entry['uuid']}",
            )
            result += [
                bitstream_from_json(b)
                for b in (listed.get("_embedded") or {}).get("bitstreams", [])
            ]
        return result

    def find_by_metadata(
        self,
        field: str,
        value: str,
        *,
        scope: str | None = None,
        page_size: int = 50,
    ) -> list[Item]:
        """Archived items whose `field` holds exactly `value` (B3 step 2), across all pages.

        Solr matches a phrase inside longer values and ignores punctuation ("koha:42" also
        finds "koha-42"), so hits are kept only when a value equals `value` (ignoring case
        and surrounding space). Items in progress are not in this (default) configuration;
        see `find_own_submissions`.
        """
        wanted = value.strip().casefold()
        found: dict[str, Item] = {}
        for indexed in self._search(field, value, {"dsoType": "item"}, scope, page_size):
            if indexed.get("type") != "item":
                continue
            hit = item_from_json(indexed)
            if hit.uuid not in found and equal_value(hit.metadata, field, wanted):
                found[hit.uuid] = hit
        return list(found.values())

    def find_own_submissions(
        self, field: str, value: str, *, page_size: int = 50
    ) -> list[Submission]:
        """This account's own items whose `field` holds exactly `value`, at any stage.

        DSpace's `workspace` discovery configuration (discovery.xml, filtered to the caller by
        SolrServiceWorkspaceWorkflowRestrictionPlugin) indexes the caller's archived items, its
        workspace items and its workflow items, the latter two as WorkspaceItem and
        XmlWorkflowItem, so no dsoType=item filter may be sent. `workflow` would list a
        reviewer's tasks instead. A workspace or workflow hit carries the item's metadata in its
        `sections`; its item comes embedded or is read through its `item` link.
        """
        wanted = value.strip().casefold()
        found: dict[str, Submission] = {}
        for indexed in self._search(field, value, {"configuration": "workspace"}, None, page_size):
            kind = indexed.get("type")
            if kind == "item":
                hit = item_from_json(indexed)
                if hit.uuid not in found and equal_value(hit.metadata, field, wanted):
                    found[hit.uuid] = Submission(hit, "archived", None)
                continue
            if kind not in ("workspaceitem", "workflowitem"):
                continue
            shown = sections_metadata(indexed.get("sections") or {})
            if not equal_value(shown, field, wanted):
                continue
            embedded = (indexed.get("_embedded") or {}).get("item")
            if isinstance(embedded, dict):
                item = item_from_json(embedded)
            else:
                href = ((indexed.get("_links") or {}).get("item") or {}).get("href")
                if not href:
                    raise RemoteRefused(SYSTEM, f"{kind} {indexed.get('id')} links no item")
                item = item_from_json(
                    self._json("GET", href, message=f"read the item of {kind} {indexed.get('id')}")
                )
            if item.uuid not in found:
                stage: Literal["workflow", "workspace"] = (
                    "workflow" if kind == "workflowitem" else "workspace"
                )
                found[item.uuid] = Submission(item, stage, int(indexed["id"]))
        return list(found.values())

    def _search(
        self,
        field: str,
        value: str,
        extra: dict[str, Any],
        scope: str | None,
        page_size: int,
    ) -> Iterator[dict[str, Any]]:
        """The indexable objects of `field:"value"` in /discover/search/objects, page by page."""
        if not FIELD_KEY.match(field):
            raise RemoteRefused(SYSTEM, f"{field!r} is not a metadata field key (schema.element)")
        first: dict[str, Any] = {
            "query": f"{field}:{lucene_phrase(value)}",
            **extra,
            "page": 0,
            "size": page_size,
        }
        if scope:
            first["scope"] = scope
        params: dict[str, Any] | None = first
        url = "/discover/search/objects"
        for _ in range(MAX_SEARCH_PAGES):
            data = self._json("GET", url, params=params, message=f"search {field} = {value!r}")
            embedded = data.get("_embedded") or {}
            # DSpace's own ITs read `searchResult`; RestContract's example says `searchResults`
            results = embedded.get("searchResult") or embedded.get("searchResults") or {}
            for obj in (results.get("_embedded") or {}).get("objects", []):
                indexed = (obj.get("_embedded") or {}).get("indexableObject")
                if isinstance(indexed, dict):
                    yield indexed
            page = results.get("page") or {}
            next_link = ((results.get("_links") or {}).get("next") or {}).get("href")
            number, pages = int(page.get("number", 0)), int(page.get("totalPages", 0))
            if next_link:
                url, params = next_link, None
            elif number + 1 < pages:
                url = "/discover/search/objects"
                params = {**first, "page": number + 1}
            else:
                break

    def in_progress(self, item_uuid: str) -> InProgress | None:
        """Where a not-yet-archived item waits: its workflow item (in review) or its workspace
        item (never deposited, or sent back by a reviewer: XmlWorkflowServiceImpl
        .returnToWorkspace makes a new one); None when it has neither (archived, or gone).

        {workflowitems,workspaceitems}/search/item?uuid= answer 200 with the wrapper or 204
        (WorkflowItemRestRepository / WorkspaceItemRestRepository.findByItemUuid)."""
        for stage, path in (
            ("workflow", "/workflow/workflowitems/search/item"),
            ("workspace", "/submission/workspaceitems/search/item"),
        ):
            response = self._request(
                "GET",
                path,
                params={"uuid": item_uuid},
                ok=(200, 204),
                message=f"look for the {stage} item of {item_uuid}",
            )
            assert response is not None
            if response.status_code == 200 and response.content.strip():
                wrapper = response.json()
                return InProgress(stage, int(wrapper["id"]))  # type: ignore[arg-type]
        return None

    # ------------------------------------------------------------------ in-progress items

    def own_workspace_items(self) -> list[WorkspaceInProgress]:
        """This account's workspace items (findBySubmitter [V]), with whether each is still
        empty: created but given no metadata and no file. A job killed between DSpace creating
        a workspace item and recording its id leaves such an item behind; the caller decides
        whether one is its own (see the pipeline's deposit step)."""
        status = self._json("GET", "/authn/status", message="read the login status")
        href = (((status.get("_links") or {}).get("eperson")) or {}).get("href") or ""
        eperson = href.rstrip("/").rsplit("/", 1)[-1]
        if not eperson:
            raise RemoteRefused(SYSTEM, "the login status names no eperson")
        url = "/submission/workspaceitems/search/findBySubmitter"
        params: dict[str, Any] | None = {"uuid": eperson, "page": 0, "size": 50}
        found: list[WorkspaceInProgress] = []
        for _ in range(MAX_SEARCH_PAGES):
            data = self._json("GET", url, params=params, message="list own workspace items")
            for ws in (data.get("_embedded") or {}).get("workspaceitems", []):
                found.append(workspace_in_progress(ws))
            next_link = ((data.get("_links") or {}).get("next") or {}).get("href")
            if not next_link:
                break
            url, params = next_link, None
        return found

    def workspace_item_uuid(self, ws_id: int) -> str:
        item = self._json(
            "GET",
            f"/submission/workspaceitems/{ws_id}/item",
            message=f"read the item of workspace item {ws_id}",
        )
        return str(item["uuid"])

    def discard_workspace_item(self, ws_id: int) -> None:
        """Delete a workspace item (and its item); a missing one is already gone."""
        self._request(
            "DELETE",
            f"/submission/workspaceitems/{ws_id}",
            ok=(204,),
            message=f"discard workspace item {ws_id}",
            missing_ok=True,
        )

    # ------------------------------------------------------------------ creation (B2a)

    def submission_sections(self, collection: str) -> dict[str, str]:
        """Which form section accepts each metadata field in `collection`'s submission (B2a 1)."""
        return self.submission_form(collection).owner

    def submission_form(self, collection: str) -> SubmissionForm:
        """The form sections of `collection`'s submission definition: where each field goes and
        which fields are required."""
        found = self._request(
            "GET",
            "/config/submissiondefinitions/search/findByCollection",
            params={"uuid": collection},
            ok=(200, 204),
            message=f"find the submission definition of collection {collection}",
        )
        assert found is not None
        if found.status_code == 204:
            # SubmissionDefinitionRestRepository.findByCollection: null (204) for no collection
            raise RemoteRefused(
                SYSTEM,
                f"DSpace has no collection {collection}; check the collection setting of "
                "[systems.koha-dspace.dspace]",
            )
        definition = self._json_of(found, "find the submission definition")
        sections_href = ((definition.get("_links") or {}).get("sections") or {}).get("href")
        sections_href = sections_href or (
            f"/config/submissiondefinitions/{definition.get('id')}/sections"
        )
        sections = self._json(
            "GET", sections_href, message=f"list the sections of {definition.get('id')}"
        )
        # The page embeds the sections by their type's plural, `submissionsections`
        # (SubmissionDefinitionsControllerIT.findSections); `sections` is only the link's name.
        listed = (sections.get("_embedded") or {}).get("submissionsections")
        if not isinstance(listed, list):
            raise RemoteRefused(
                SYSTEM,
                f"the sections of submission definition {definition.get('id')} came without "
                "_embedded.submissionsections",
                url=sections_href,
            )
        owner: dict[str, str] = {}
        required: list[RequiredField] = []
        for section in listed:
            if section.get("sectionType") != "submission-form":
                continue
            config = ((section.get("_links") or {}).get("config") or {}).get("href")
            form = self._json(
                "GET",
                config or f"/config/submissionforms/{section['id']}",
                message=f"read submission form {section.get('id')}",
            )
            for row in form.get("rows", []):
                for form_field in row.get("fields", []):
                    keys = tuple(
                        str(m["metadata"])
                        for m in form_field.get("selectableMetadata") or []
                        if m.get("metadata")
                    )
                    for key in keys:
                        owner.setdefault(key, section["id"])
                    # MetadataValidation.validate: a mandatory field visible at submission and
                    # not bound to some dc.type values (typeBind) must have a value
                    if (
                        keys
                        and form_field.get("mandatory")
                        and not form_field.get("typeBind")
                        and form_field.get("scope") in (None, "submission")
                    ):
                        required.append(RequiredField(keys, form_field.get("mandatoryMessage")))
        return SubmissionForm(owner, tuple(required))

    def create_by_submission(
        self,
        collection: str,
        metadata: dict[str, list[str]],
        file: Upload,
        filename: str,
        *,
        md5: str | None = None,
        progress: Progress | None = None,
        resume: dict[str, Any] | None = None,
    ) -> Deposit:
        """Deposit an item the way a submitter does (B2a); works without admin rights.

        `progress(stage, checkpoint)` follows each remote stage (workspace, metadata, upload,
        license, deposit); passing the last checkpoint back as `resume` continues after it.
        `md5`, when given, is the MD5 the stored copy must have (the caller's, taken with its
        own checks of `file`); otherwise the file's is computed here first.
        """
        local_md5 = md5 or file_md5(file)
        size = _size_of(file)
        done, state = self._start("submission", SUBMISSION_STAGES, resume)
        form = self.submission_form(collection)
        owner = form.owner
        outside = sorted(k for k in metadata if k not in owner)
        if outside:
            raise RemoteRefused(
                SYSTEM,
                f"collection {collection}'s submission form has no place for "
                f"{', '.join(outside)}; add them to submission-forms.xml or use the admin path",
            )
        missing = form.missing(metadata)
        if missing and done < 1:
            # DSpace would create the workspace item and only list the gap in its `errors`,
            # leaving a half-made submission behind: nothing is written instead.
            raise RemoteRefused(
                SYSTEM,
                f"collection {collection}'s submission form requires "
                f"{', '.join(f.describe() for f in missing)}, which the record does not give",
            )

        def report(stage: str, **ids: Any) -> None:
            state.update(ids, stage=stage)
            log.debug("DSpace submission stage %s: %s", stage, state)
            if progress is not None:
                progress(stage, dict(state))

        if done < 1:
            # RestResourceController.post consumes only application/json (or hal+json): without
            # a JSON body Spring answers 415. createAndReturn reads nothing from it.
            created = self._json(
                "POST",
                "/submission/workspaceitems",
                params={"owningCollection": collection},
                json_body={},
                ok=(201,),
                message=f"create a workspace item in collection {collection}",
            )
            ws_id = int(created["id"])
            item_json = self._json(
                "GET",
                f"/submission/workspaceitems/{ws_id}/item",
                message=f"read the item of workspace item {ws_id}",
            )
            report("workspace", id=ws_id, item=str(item_json["uuid"]))
        ws_id, item_uuid = int(state["id"]), str(state["item"])

        if done < 5:
            workspace = self._workspace(ws_id)
            if workspace is None:
                # deposited (or discarded) after the last checkpoint was written
                deposited = self.item(item_uuid)
                if deposited is None:
                    raise RemoteRefused(
                        SYSTEM,
                        f"workspace item {ws_id} and item {item_uuid} are gone; start over",
                    )
                report("deposit", in_workflow=not deposited.in_archive)
                done = 5
        if done < 2:
            workspace = self._patch_metadata(ws_id, workspace, metadata, owner)
            report("metadata")
        if done < 3:
            workspace, uploaded = self._upload_once(
                ws_id, workspace, file, filename, local_md5, size
            )
            report("upload", bitstream=uploaded.uuid, md5=uploaded.md5)
        if done < 4:
            if not (workspace["sections"].get("license") or {}).get("granted"):
                workspace = self._patch(
                    ws_id,
                    [{"op": "add", "path": "/sections/license/granted", "value": True}],
                    "grant the license",
                )
            report("license")
        if done < 5:
            errors = workspace.get("errors") or []
            if errors:
                listed = "; ".join(
                    f"{e.get('message')} at {', '.join(e.get('paths') or [])}" for e in errors
                )
                raise RemoteRefused(
                    SYSTEM, f"workspace item {ws_id} is not complete, not depositing: {listed}"
                )
            answer = self._request(
                "POST",
                "/workflow/workflowitems",
                content=f"{self.api_url}/submission/workspaceitems/{ws_id}",
                headers={"Content-Type": "text/uri-list"},
                ok=(201,),
                message=f"deposit workspace item {ws_id}",
            )
            assert answer is not None
            # B2a step 7: an empty body means archived now; a workflowitem means review
            in_workflow = bool(answer.content.strip())
            extra = {"workflow": answer.json().get("id")} if in_workflow else {}
            report("deposit", in_workflow=in_workflow, **extra)
        return self._finish(state, file, filename, local_md5, workspace_id=ws_id)

    def _start(
        self, path: str, stages: tuple[str, ...], resume: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        if not resume:
            return 0, {"path": path}
        stage = resume.get("stage")
        if resume.get("path") != path or stage not in stages:
            raise BadResume(
                f"checkpoint {resume!r} is not a DSpace {path} checkpoint (stages {stages})"
            )
        return stages.index(stage) + 1, dict(resume)

    def _workspace(self, ws_id: int) -> dict[str, Any] | None:
        response = self._request(
            "GET",
            f"/submission/workspaceitems/{ws_id}",
            message=f"read workspace item {ws_id}",
            missing_ok=True,
        )
        return response.json() if response is not None else None

    def _patch(self, ws_id: int, ops: list[dict[str, Any]], what: str) -> dict[str, Any]:
        return self._json(
            "PATCH",
            f"/submission/workspaceitems/{ws_id}",
            content=json.dumps(ops, ensure_ascii=False).encode("utf-8"),
            headers={"Content-Type": "application/json-patch+json"},
            message=f"{what} on workspace item {ws_id}",
        )

    def _patch_metadata(
        self,
        ws_id: int,
        workspace: dict[str, Any] | None,
        metadata: dict[str, list[str]],
        owner: dict[str, str],
    ) -> dict[str, Any]:
        """One PATCH setting every field in its section; fields already right are left alone,
        so a resumed job does not duplicate values."""
        sections = (workspace or {}).get("sections") or {}
        ops: list[dict[str, Any]] = []
        for key, values in metadata.items():
            section = owner[key]
            current = [v.get("value") for v in (sections.get(section) or {}).get(key, [])]
            if current == list(values):
                continue
            path = f"/sections/{section}/{key}"
            if current:
                ops.append({"op": "remove", "path": path})
            if values:
                ops.append({"op": "add", "path": path, "value": value_objects(list(values))})
        if not ops:
            return workspace or self._workspace(ws_id) or {}
        return self._patch(ws_id, ops, "set metadata")

    def _upload_once(
        self,
        ws_id: int,
        workspace: dict[str, Any] | None,
        file: Upload,
        filename: str,
        local_md5: str,
        size: int,
    ) -> tuple[dict[str, Any], Bitstream]:
        """Upload unless an intact copy is already there; drop earlier copies that differ."""
        workspace = workspace or self._workspace(ws_id) or {}
        files = ((workspace.get("sections") or {}).get("upload") or {}).get("files") or []
        listed = [bitstream_from_json(f) for f in files]
        for found in listed:
            if found.name == filename and found.md5 == local_md5 and found.size == size:
                return workspace, found
        stale = [i for i, found in enumerate(listed) if found.name == filename]
        if stale:
            workspace = self._patch(
                ws_id,
                [{"op": "remove", "path": f"/sections/upload/files/{i}"} for i in reversed(stale)],
                f"remove earlier copies of {filename}",
            )
        before = {f.uuid for f in listed}
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"

        def parts(stack: ExitStack) -> dict[str, Any]:
            handle: BinaryIO = stack.enter_context(_reading(file))
            return {"file": (filename, handle, mime)}  # httpx streams the open file

        workspace = self._json(
            "POST",
            f"/submission/workspaceitems/{ws_id}",
            files=parts,
            ok=(201,),
            message=f"upload {filename} to workspace item {ws_id}",
        )
        files = ((workspace.get("sections") or {}).get("upload") or {}).get("files") or []
        new = [bitstream_from_json(f, filename) for f in files]
        added = [b for b in new if b.uuid not in before and b.name == filename] or [
            b for b in new if b.uuid not in before
        ]
        if not added:
            raise RemoteRefused(
                SYSTEM, f"upload of {filename} to workspace item {ws_id} listed no new file"
            )
        self.verify(added[-1], file, local_md5)
        return workspace, added[-1]

    # ------------------------------------------------------------------ creation (B2b)

    def create_as_admin(
        self,
        collection: str,
        metadata: dict[str, list[str]],
        file: Upload,
        filename: str,
        *,
        md5: str | None = None,
        progress: Progress | None = None,
        resume: dict[str, Any] | None = None,
    ) -> Deposit:
        """Create an archived item directly (B2b): administrators only, no form, no workflow.

        Stages reported: item, bundle, bitstream. `md5` as for create_by_submission.
        """
        local_md5 = md5 or file_md5(file)
        size = _size_of(file)
        done, state = self._start("admin", ADMIN_STAGES, resume)

        def report(stage: str, **ids: Any) -> None:
            state.update(ids, stage=stage)
            log.debug("DSpace admin stage %s: %s", stage, state)
            if progress is not None:
                progress(stage, dict(state))

        if done < 1:
            titles = metadata.get("dc.title") or []
            created = self._json(
                "POST",
                "/core/items",
                params={"owningCollection": collection},
                json_body={
                    "name": titles[0] if titles else None,
                    "metadata": {k: value_objects(list(v)) for k, v in metadata.items() if v},
                    "inArchive": True,
                    "discoverable": True,
                    "withdrawn": False,
                    "type": "item",
                },
                ok=(201,),
                message=f"create an item in collection {collection}",
            )
            report("item", item=str(created["uuid"]))
        item_uuid = str(state["item"])
        if done < 2:
            report("bundle", bundle=self._original_bundle(item_uuid))
        bundle = str(state["bundle"])
        if done < 3:
            stored = self._bitstream_once(bundle, file, filename, local_md5, size)
            report("bitstream", bitstream=stored.uuid, md5=stored.md5)
        return self._finish(state, file, filename, local_md5, workspace_id=None)

    def _original_bundle(self, item_uuid: str) -> str:
        def existing() -> str | None:
            listed = self._json(
                "GET", f"/core/items/{item_uuid}/bundles", message=f"list bundles of {item_uuid}"
            )
            for entry in (listed.get("_embedded") or {}).get("bundles", []):
                if entry.get("name") == "ORIGINAL":
                    return str(entry["uuid"])
            return None

        found = existing()
        if found:
            return found
        created = self._json(
            "POST",
            f"/core/items/{item_uuid}/bundles",
            json_body={"name": "ORIGINAL", "metadata": {}},
            ok=(201,),
            message=f"create the ORIGINAL bundle of {item_uuid}",
        )
        return str(created["uuid"])

    def _bitstream_once(
        self, bundle: str, file: Upload, filename: str, local_md5: str, size: int
    ) -> Bitstream:
        listed = self._json(
            "GET", f"/core/bundles/{bundle}/bitstreams", message=f"list bitstreams of {bundle}"
        )
        for entry in (listed.get("_embedded") or {}).get("bitstreams", []):
            found = bitstream_from_json(entry)
            if found.name != filename:
                continue
            if found.md5 == local_md5 and found.size == size:
                return found
            self._request(
                "DELETE",
                f"/core/bitstreams/{found.uuid}",
                ok=(204,),
                message=f"delete a differing copy of {filename}",
            )
        # DSpace uses only the name and metadata of these properties
        # (BundleRestRepository.processBitstreamCreation): a declared size or MD5 would never be
        # checked, so the stored copy's MD5 is compared with the local one after the upload.
        properties = {"name": filename, "metadata": {}, "bundleName": "ORIGINAL"}
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"

        def parts(stack: ExitStack) -> dict[str, Any]:
            handle: BinaryIO = stack.enter_context(_reading(file))
            return {
                "file": (filename, handle, mime),  # httpx streams the open file
                "properties": (None, json.dumps(properties), "application/json"),
            }

        created = self._json(
            "POST",
            f"/core/bundles/{bundle}/bitstreams",
            files=parts,
            ok=(201,),
            message=f"upload {filename} to bundle {bundle}",
        )
        stored = bitstream_from_json(created, filename)
        self.verify(stored, file, local_md5)
        return stored

    # ------------------------------------------------------------------ both paths

    def _finish(
        self,
        state: dict[str, Any],
        file: Upload,
        filename: str,
        local_md5: str,
        *,
        workspace_id: int | None,
    ) -> Deposit:
        item_uuid = str(state["item"])
        item = self.item(item_uuid)
        if item is None:
            raise RemoteRefused(SYSTEM, f"item {item_uuid} vanished right after its creation")
        stored: Bitstream | None = None
        if state.get("bitstream"):
            stored = self.bitstream(str(state["bitstream"]))
        if stored is None:
            stored = next((b for b in self.item_bitstreams(item_uuid) if b.name == filename), None)
        if stored is None:
            raise RemoteRefused(SYSTEM, f"item {item_uuid} has no bitstream named {filename}")
        self.verify(stored, file, local_md5)
        return Deposit(
            item=item,
            bitstream=stored,
            in_workflow=not item.in_archive,
            workspace_id=workspace_id,
        )


@contextmanager
def connected(api_url: str, user: str, password: str, **kwargs: Any) -> Iterator[DSpace]:
    """A logged-in client, closed on exit."""
    client = DSpace(api_url, user, password, **kwargs)
    try:
        client.login()
        yield client
    finally:
        client.close()
