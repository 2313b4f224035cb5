"""Koha: read and write biblios as MARCXML over REST, upload cover images through the staff
interface (contract notes part A; A1..A4 below name the points relied on).

Two clients with two cookie jars on purpose: since 24.05 a REST request that carries a staff
CGISESSID cookie must also carry that session's CSRF token (A2), so REST never shares cookies
with the staff-page scraping.

    with KohaRest(url, client_credentials=(key, secret)) as rest:
        marcxml = rest.get_marcxml(42)
        rest.put_marcxml(42, changed)          # then GET again: Koha may keep old fields (A1)
    staff = KohaStaff(url, "cataloguer", password)
    imagenumber = staff.upload_cover(42, jpeg)
    opac_cover_url(opac, imagenumber=imagenumber, biblionumber=42)
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, quote_plus, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import lxml.html
from lxml import etree

from .. import safexml
from . import (
    AuthFailed,
    RemoteError,
    RemoteRefused,
    error_class,
    tls_context,
    transport_error,
)

SYSTEM = "Koha"
MARCXML = "application/marcxml+xml"
log = logging.getLogger(__name__)

#: A4: what upload-file.pl's error codes mean (from Koha's upload JS messages)
UPLOAD_ERRORS = {
    1: "a file with this name already exists",
    2: "the upload directory is not writeable",
    3: "the upload root directory is not defined",
    4: "the temporary directory is not defined",
}
#: A4: upload-cover-image.pl's error codes, by the first sentence upload-images.tt shows for
#: each (the page never shows the code), and what each means for a person
COVER_ERRORS = {
    "Failed to unzip archive": (
        "UZIPFAIL",
        "Koha could not unzip the upload (it was processed as a ZIP file)",
    ),
    "Cannot open folder index": (
        "OPNLINK",
        "Koha could not open the ZIP's idlink.txt or datalink.txt",
    ),
    "Cannot process file as an image": (
        "OPNIMG",
        "Koha could not read the file as an image (GIF, JPEG, PNG or XPM)",
    ),
    "Unrecognized or missing field delimiter": (
        "DELERR",
        "the ZIP's link file has no comma or tab delimiter",
    ),
    "Unable to save image to database": (
        "DBERR",
        "Koha could not store the image (does the biblio exist? Koha's log has the cause)",
    ),
    "An unknown error has occurred": (
        "unknown",
        "Koha reported an unknown error (Koha's log has the cause)",
    ),
}
#: a token is renewed this many seconds before Koha says it expires
TOKEN_MARGIN = 30.0


class KohaRest:
    """Koha's REST API (A1, A2): OAuth2 client credentials, else Basic auth."""

    def __init__(
        self,
        base_url: str,
        *,
        basic: tuple[str, str] | None = None,
        client_credentials: tuple[str, str] | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._basic = basic
        self._client_credentials = client_credentials
        self._token: str | None = None
        self._token_expires = 0.0
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/v1",
            timeout=timeout,
            transport=transport,
            verify=tls_context(),
        )

    def get_marcxml(self, biblionumber: int) -> bytes:
        """A1: the stored record as MARCXML."""
        response = self._send(
            "GET", f"/biblios/{biblionumber}", f"reading biblio {biblionumber}", accept=MARCXML
        )
        return response.content

    def put_marcxml(self, biblionumber: int, marcxml: bytes) -> None:
        """A1: replace the whole record. Koha may keep protected fields (overlay rules): read
        the record again to see what was stored.

        A body that is not a MARCXML record with fields is never sent: released Koha answers it
        with a bare 500 (indistinguishable from an outage, so it would be retried) or stores
        the empty record over the biblio; only Koha main (2026) refuses it with 400."""
        problem = marcxml_problem(marcxml)
        if problem is not None:
            raise RemoteRefused(SYSTEM, f"writing biblio {biblionumber}: not sent, {problem}")
        self._send(
            "PUT",
            f"/biblios/{biblionumber}",
            f"writing biblio {biblionumber}",
            accept="application/json",
            content_type=MARCXML,
            content=marcxml,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    @property
    def _user(self) -> str:
        """Who Koha sees: the OAuth2 client id, else the Basic auth user."""
        if self._client_credentials is not None:
            return self._client_credentials[0]
        return self._basic[0] if self._basic else "?"

    def _secrets(self) -> tuple[str, ...]:
        """What this client sends that no error message may quote."""
        found = [self._token or ""]
        if self._client_credentials is not None:
            found.append(self._client_credentials[1])
        if self._basic is not None:
            user, password = self._basic
            found += [password, base64.b64encode(f"{user}:{password}".encode()).decode()]
        return tuple(found)

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        accept: str,
        content_type: str | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """One request; with OAuth a 401 renews the token and tries once more (A2)."""
        fresh = False
        for attempt in (1, 2):
            headers = {"Accept": accept}
            if content_type:
                headers["Content-Type"] = content_type
            if self._client_credentials is not None:
                fresh = self._ensure_token() or fresh
                headers["Authorization"] = f"Bearer {self._token}"
            auth = (
                httpx.BasicAuth(*self._basic)
                if self._basic and not self._client_credentials
                else None
            )
            try:
                response = self._http.request(
                    method, path, headers=headers, content=content, auth=auth
                )
            except httpx.HTTPError as exc:
                raise transport_error(SYSTEM, exc, what) from exc
            if (
                response.status_code == 401
                and self._client_credentials is not None
                and attempt == 1
                and not fresh
            ):
                log.info("Koha refused the OAuth token while %s; fetching a new one", what)
                self._token = None
                continue
            if response.status_code >= 400:
                raise rest_error(response, what, path, self._user, self._secrets())
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _ensure_token(self) -> bool:
        """A2: a client-credentials token, fetched at first use and when (nearly) expired.
        True when a new token was fetched just now."""
        if self._token is not None and time.monotonic() < self._token_expires:
            return False
        assert self._client_credentials is not None
        client_id, secret = self._client_credentials
        what = f"getting an OAuth2 token for client {client_id}"
        try:
            response = self._http.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": secret,
                },
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise transport_error(SYSTEM, exc, what) from exc
        if response.status_code == 400:
            raise AuthFailed(
                SYSTEM,
                f"{what}: Koha does not grant client credentials "
                "(syspref RESTOAuth2ClientCredentials off, or the OAuth2 module missing)",
                **answer_of(response, hide=(secret,)),
            )
        if response.status_code in (401, 403):
            raise AuthFailed(
                SYSTEM,
                f"{what}: Koha refused the client id or secret",
                **answer_of(response, hide=(secret,)),
            )
        if response.status_code >= 400:
            raise error_class(response.status_code)(
                SYSTEM, what, **answer_of(response, hide=(secret,))
            )
        try:
            body = response.json()
            token = str(body["access_token"])
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError) as exc:
            # never quote a token answer: it may hold a secret
            raise RemoteRefused(
                SYSTEM,
                f"{what}: unexpected token answer ({type(exc).__name__})",
                method="POST",
                url=str(response.request.url),
                status=response.status_code,
            ) from exc
        self._token = token
        self._token_expires = time.monotonic() + max(0.0, expires_in - TOKEN_MARGIN)
        return True


def answer_of(response: httpx.Response, *, hide: tuple[str, ...] = ()) -> dict[str, Any]:
    """What an error quotes of Koha's answer; of an HTML page only its visible text, so a
    page's CSRF token (in a meta tag or hidden input) never reaches a message. `hide` are the
    secrets the request carried (password, client secret, token, Basic credentials): an
    error page that echoes the request (debug pages do) must not carry them into a message."""
    body = response.text
    if "html" in response.headers.get("content-type", ""):
        body = text_of(html_of(response))
    for secret in filter(None, hide):
        for form in {secret, quote_plus(secret), quote(secret, safe="")}:
            body = body.replace(form, "***")
    return {
        "method": response.request.method,
        "url": str(response.request.url),
        "status": response.status_code,
        "body": body,
    }


def rest_error(
    response: httpx.Response, what: str, path: str, user: str, hide: tuple[str, ...] = ()
) -> RemoteError:
    """A1/A2: a RemoteError whose message says what Koha's answer means for a person, never
    quoting the request's secrets (`hide`, see `answer_of`)."""
    status = response.status_code
    try:
        payload: Any = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    biblio = path.rsplit("/", 1)[-1]
    if status == 401:
        if error == "Basic authentication disabled":
            message = f"{what}: Basic authentication disabled (syspref RESTBasicAuth is off)"
        elif error == "Session has been expired.":
            message = f"{what}: the session has expired"
        else:
            message = f"{what}: Koha refused the credentials"
    elif status == 403 and isinstance(payload, dict) and "required_permissions" in payload:
        message = f"{what}: {refusal_of(error, payload['required_permissions'], user)}"
    elif status == 403 and error and "locked record" in str(error):
        message = f"{what}: biblio {biblio} is a locked record in Koha"
    elif status == 403 and "Wrong CSRF token" in response.text:
        message = f"{what}: Koha demanded a CSRF token (a staff session cookie was sent)"
    elif status == 404:
        message = f"biblio {biblio} not found in Koha"
    elif status == 406:
        accepted = ", ".join(map(str, payload)) if isinstance(payload, list) else "?"
        message = f"{what}: Koha does not accept this format (it accepts {accepted})"
    elif status == 400 and isinstance(payload, dict) and payload.get("error_code") == "bad_record":
        message = f"{what}: Koha could not parse the MARCXML"
    elif status == 500 and response.request.method == "PUT":
        # A1 [V] Koha/REST/Plugin/Exceptions.pm: any exception in `update` (ModBiblio, or
        # before 2026 a body the parser dies on) is this 500; only Koha's log says which
        message = (
            f"{what}: Koha failed while storing biblio {biblio} (HTTP 500; Koha's log says why)"
        )
    else:
        message = f"{what}: Koha answered HTTP {status}"
    return error_class(status)(SYSTEM, message, **answer_of(response, hide=hide))


def refusal_of(error: Any, required: Any, user: str) -> str:
    """A2 [V] Koha/REST/V1/Auth.pm `under`: a 403 carrying `required_permissions` is
    Authorization::Unauthorized. With permissions in it the user lacks them; null (the key is
    always there) means Basic auth refused the password itself (`_basic_auth`), or another
    refusal named only by `error`."""
    if isinstance(required, dict) and required:
        needed = ", ".join(
            str(module) if flag in (1, "1") else f"{module}: {flag}"
            for module, flag in required.items()
        )
        return f"the Koha user {user!r} is missing permission(s) {needed}"
    if error == "Invalid password":
        return f"Koha refused the password of API user {user!r} (wrong password or no such user)"
    if error == "Password has expired":
        return (
            f"the password of Koha API user {user!r} has expired; set a new one on the patron "
            "in Koha"
        )
    return f"Koha refused API user {user!r}: {error or 'no reason given'}"


def marcxml_problem(marcxml: bytes) -> str | None:
    """Why a body is not a MARCXML record with at least one field, or None when it is."""
    if not marcxml.strip():
        return "the MARCXML is empty"
    try:
        root = etree.fromstring(marcxml, safexml.parser())
    except etree.XMLSyntaxError as exc:
        return f"the MARCXML does not parse ({exc})"
    if etree.QName(root).localname == "collection":
        root = next((child for child in root if is_named(child, "record")), None)
    if root is None or not is_named(root, "record"):
        return "the MARCXML holds no record"
    if not any(is_named(child, "controlfield", "datafield") for child in root):
        return "the MARCXML record has no fields"
    return None


def is_named(element: Any, *names: str) -> bool:
    return isinstance(element.tag, str) and etree.QName(element).localname in names


class _SessionExpired(AuthFailed):
    """The staff session seems to have ended mid-flow (Koha answered its login page, or
    upload-file.pl said "denied"): log in again once; a second time is a real refusal."""

    def __init__(self, reason: str, **answer: Any) -> None:
        self.reason = reason
        super().__init__(SYSTEM, reason, **answer)


class KohaStaff:
    """The staff interface (A3, A4): a logged-in session for the local cover upload."""

    def __init__(
        self,
        staff_url: str,
        userid: str,
        password: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.staff_url = staff_url.rstrip("/")
        self.userid = userid
        self._password = password
        self.generation: str | None = None
        self._logged_in = False
        self._http = httpx.Client(
            base_url=self.staff_url,
            timeout=timeout,
            transport=transport,
            follow_redirects=True,
            verify=tls_context(),
        )

    # -- A3 login -------------------------------------------------------------------------------

    def login(self) -> None:
        """A3: GET a staff page, copy every hidden input of #loginform, add this generation's
        user and password fields, POST it to the form's action."""
        what = f"logging in to the Koha staff interface as {self.userid!r}"
        self._http.cookies.clear()
        page = self._request("GET", "/cgi-bin/koha/mainpage.pl", what)
        document = html_of(page)
        form = login_form(document)
        if form is None:
            self._logged_in = True  # a session was already open
            return
        fields = {
            str(element.get("name")): str(element.get("value") or "")
            for element in form.xpath(".//input[@type='hidden'][@name]")
        }
        names = set(form.xpath(".//input/@name"))
        if "csrf_token" in fields and "login_userid" in names:
            self.generation = "24.05"
            fields.update(login_userid=self.userid, login_password=self._password)
        elif "userid" in names and "password" in names:
            self.generation = "22.11"
            fields.update(userid=self.userid, password=self._password)
        else:
            raise RemoteRefused(
                SYSTEM,
                f"{what}: the login form has neither 24.05 nor 22.11 fields "
                f"(inputs: {', '.join(sorted(names))})",
                method="GET",
                url=str(page.request.url),
                status=page.status_code,
            )
        action = urljoin(str(page.url), str(form.get("action") or page.url.path))
        answer = self._request("POST", action, what, data=fields)
        if answer.status_code == 403:
            raise AuthFailed(
                SYSTEM,
                f"{what}: Koha refused the login form's CSRF token",
                **answer_of(answer, hide=(self._password,)),
            )
        if answer.status_code >= 400:
            raise self._error(answer, what)
        document = html_of(answer)
        self._refuse_second_step(document, answer, what)
        if login_form(document) is not None:
            said = login_error(document)
            if "Invalid username or password" in said:
                reason = "invalid username or password"
            elif lacks_permission(document):
                reason = f"{self.userid!r} may not use the staff interface (permission catalogue)"
            elif said:
                # an expired password, a locked account, or any refusal in a translated Koha
                reason = f"Koha refused the login of {self.userid!r}: {said}"
            else:
                reason = (
                    "Koha showed the login form again (are these the right login fields "
                    f"for Koha {self.generation}?)"
                )
            raise AuthFailed(
                SYSTEM,
                f"{what}: {reason}",
                method="POST",
                url=str(answer.request.url),
                status=answer.status_code,
            )
        self._logged_in = True
        log.info("logged in to Koha %s staff interface as %s", self.generation, self.userid)

    # -- A4 cover upload ------------------------------------------------------------------------

    def upload_cover(
        self, biblionumber: int, jpeg: bytes, filename: str = "cover.jpg"
    ) -> int | None:
        """A4: temporary upload, attach it to the biblio replacing older covers, and read the
        new imagenumber from the cover list (None when the list shows none)."""
        if not self._logged_in:
            self.login()
        try:
            return self._upload_cover(biblionumber, jpeg, filename)
        except _SessionExpired:
            log.info("Koha staff session expired; logging in again as %s", self.userid)
            self.login()
            try:
                return self._upload_cover(biblionumber, jpeg, filename)
            except _SessionExpired as exc:
                raise AuthFailed(
                    SYSTEM,
                    f"{exc.reason} (again, right after {self.userid!r} logged in)",
                    method=exc.method,
                    url=exc.url,
                    status=exc.status,
                    body=exc.body,
                ) from exc

    def _upload_cover(self, biblionumber: int, jpeg: bytes, filename: str) -> int | None:
        what = f"uploading a cover for biblio {biblionumber}"
        list_path = "/cgi-bin/koha/tools/upload-cover-image.pl?" + urlencode(
            {"biblionumber": biblionumber}
        )
        # an authenticated page first: checks the session and gives a fresh CSRF token (A3)
        csrf = self._csrf_token(self._staff_page("GET", list_path, what))

        # step 1: temporary upload; the answer is JSON labelled text/html (A4)
        headers = {"CSRF-TOKEN": csrf} if csrf else {}
        upload = self._request(
            "POST",
            "/cgi-bin/koha/tools/upload-file.pl?temp=1",
            what,
            files={"file": (filename, jpeg, "image/jpeg")},
            headers=headers,
        )
        if upload.status_code >= 400:
            raise self._error(upload, f"{what}: upload-file.pl")
        try:
            result = json.loads(upload.text)
        except ValueError:
            if login_form(html_of(upload)) is not None:
                raise _SessionExpired(
                    f"{what}: Koha answered its login page", **answer_of(upload)
                ) from None
            raise RemoteRefused(
                SYSTEM, f"{what}: upload-file.pl did not answer JSON", **answer_of(upload)
            ) from None
        status = result.get("status") if isinstance(result, dict) else None
        if status == "denied":
            # an ended session (check_cookie_auth) or a user without an upload permission
            raise _SessionExpired(
                f"{what}: upload-file.pl denied the upload to {self.userid!r} (session ended, "
                "or missing permission tools: upload_local_cover_images)",
                **answer_of(upload),
            )
        if status != "done" or not result.get("fileid"):
            raise RemoteRefused(
                SYSTEM,
                f"{what}: upload-file.pl failed: {upload_failure(result)}",
                **answer_of(upload),
            )
        fileid = str(result["fileid"]).split(",")[0]

        # step 2: attach the upload to the biblio, replacing the old covers (A4)
        fields = {
            "uploadedfileid": fileid,
            "filetype": "image",
            "biblionumber": str(biblionumber),
            "replace": "1",
        }
        if self.generation == "24.05":
            fields.update(op="cud-process", csrf_token=csrf or "")
        attached = self._staff_page(
            "POST", "/cgi-bin/koha/tools/upload-cover-image.pl", what, data=fields
        )
        found = cover_error(html_of(attached))
        if found is not None:
            code, meaning = found
            raise RemoteRefused(
                SYSTEM,
                f"{what}: {meaning} ({code})",
                method="POST",
                url=str(attached.request.url),
                status=attached.status_code,
                body=text_of(html_of(attached)),
            )

        # step 3: the cover list names the imagenumber (A4); on 24.05 a success redirects there
        listing = attached if attached.history else self._staff_page("GET", list_path, what)
        numbers = [int(match) for match in re.findall(r'id="imagenumber-(\d+)"', listing.text)]
        return max(numbers) if numbers else None

    def _staff_page(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """A staff page that must not be the login form; a login form means the session
        ended (→ _SessionExpired) or the user lacks the page's permission (→ AuthFailed)."""
        response = self._request(method, url, what, **kwargs)
        if response.status_code >= 400:
            if "Wrong CSRF token" in response.text:
                raise AuthFailed(
                    SYSTEM, f"{what}: Koha refused the CSRF token", **answer_of(response)
                )
            raise self._error(response, what)
        document = html_of(response)
        self._refuse_second_step(document, response, what)
        if login_form(document) is not None:
            if lacks_permission(document):
                raise AuthFailed(
                    SYSTEM,
                    f"{what}: {self.userid!r} may not open {response.url.path} in Koha "
                    "(missing permission)",
                    method=method,
                    url=str(response.request.url),
                    status=response.status_code,
                )
            raise _SessionExpired(
                f"{what}: Koha answered its login page for {response.url.path}",
                method=method,
                url=str(response.request.url),
                status=response.status_code,
            )
        return response

    def _refuse_second_step(self, document: Any, page: httpx.Response, what: str) -> None:
        """A3: a password login that Koha holds for two-factor authentication cannot go on
        unattended; say so instead of "wrong login fields" or "session expired"."""
        step = second_step(document)
        if step is None:
            return
        if step == "prompt":
            reason = (
                f"the Koha staff user {self.userid!r} has two-factor authentication on (Koha "
                "asks for a code after the password); use a staff user without it for cover "
                "uploads"
            )
        else:
            reason = (
                f"Koha wants the staff user {self.userid!r} to set up two-factor "
                "authentication first (syspref TwoFactorAuthentication is 'enforced'); cover "
                "uploads need a staff user that logs in with a password alone, which "
                "'enforced' rules out"
            )
        raise AuthFailed(
            SYSTEM,
            f"{what}: {reason}",
            method=page.request.method,
            url=str(page.request.url),
            status=page.status_code,
        )

    def _csrf_token(self, page: httpx.Response) -> str | None:
        """A3: the token of the current session, from <meta name="csrf-token"> or a form's
        hidden csrf_token; None on 22.11, which has none."""
        document = html_of(page)
        tokens = document.xpath("//meta[@name='csrf-token']/@content") or document.xpath(
            "//input[@name='csrf_token']/@value"
        )
        if tokens:
            return str(tokens[0])
        if self.generation == "24.05":
            raise RemoteRefused(
                SYSTEM,
                "Koha 24.05 page carries no CSRF token",
                method=page.request.method,
                url=str(page.request.url),
                status=page.status_code,
            )
        return None

    def _error(self, response: httpx.Response, what: str) -> RemoteError:
        """The RemoteError for a staff page's error status, never quoting the password or
        the session cookie should Koha's error page echo the request."""
        secrets = (self._password, *(str(value) for value in self._http.cookies.values()))
        return error_class(response.status_code)(SYSTEM, what, **answer_of(response, hide=secrets))

    def _request(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(SYSTEM, exc, what) from exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def html_of(response: httpx.Response) -> Any:
    """The page as an lxml.html tree (an empty document for an empty or non-HTML body)."""
    text = response.text
    if not text.strip():
        return lxml.html.fromstring("<html></html>")
    try:
        return lxml.html.fromstring(text)
    except (etree.ParserError, ValueError):
        return lxml.html.fromstring("<html></html>")


def login_form(document: Any) -> Any | None:
    forms = document.xpath("//form[@id='loginform']")
    return forms[0] if forms else None


def lacks_permission(document: Any) -> bool:
    """A3 [V] auth.tt: the login page answers a logged-in user who lacks the page's
    permission; only that branch (`nopermission`) adds the a#previous_page link, whatever the
    language. The English sentence covers pages without the link."""
    if document.xpath("//a[@id='previous_page']"):
        return True
    return "do not have permission" in login_error(document)


def login_error(document: Any) -> str:
    """A3 [V] auth.tt: the text of `#login_error`, where Koha says why it showed the login form
    again (wrong or expired password, locked account...), in the staff interface's language;
    "" when there is none. Cut short: it is quoted in error messages."""
    texts = [
        " ".join(div.text_content().split()) for div in document.xpath("//*[@id='login_error']")
    ]
    return " ".join(text for text in texts if text)[:300]


def second_step(document: Any) -> str | None:
    """A3 [V] auth.tt: "prompt" when Koha asks for a two-factor code (TwoFA_prompt reuses
    `#loginform`, with an `otp_token` field), "setup" when it asks the user to register an
    authenticator first (TwoFA_setup: `#registration-form`), else None."""
    if document.xpath("//form[@id='loginform']//input[@name='otp_token']"):
        return "prompt"
    if document.xpath("//*[@id='registration-form']"):
        return "setup"
    return None


def cover_error(document: Any) -> tuple[str, str] | None:
    """A4: (code, meaning) of the error an upload-cover-image.pl answer shows, None when it
    shows none. upload-images.tt shows only the error's text in an alert div (main:
    `#upload_results div.alert.alert-warning`; older: `div.dialog.alert`), never its code.
    Text it does not know (a translated Koha) in either place is an unknown error."""
    texts = [
        " ".join(alert.text_content().split())
        for alert in document.xpath("//div[contains(concat(' ', @class, ' '), ' alert ')]")
    ]
    for text in texts:
        for sentence, found in COVER_ERRORS.items():
            if text.startswith(sentence):
                return found
    results = document.xpath(
        "//*[@id='upload_results']//div[contains(concat(' ', @class, ' '), ' alert ')]"
        " | //div[contains(concat(' ', @class, ' '), ' dialog ')]"
        "[contains(concat(' ', @class, ' '), ' alert ')]"
    )
    if any(" ".join(alert.text_content().split()) for alert in results):
        return COVER_ERRORS["An unknown error has occurred"]
    return None


def text_of(document: Any) -> str:
    alerts = document.xpath("//div[contains(@class, 'alert')]")
    source = alerts[0] if alerts else document
    return " ".join(source.text_content().split())


def upload_failure(result: Any) -> str:
    """A4: upload-file.pl's `errors` as words, e.g. 'cover.jpg: a file with this name ...'."""
    errors = result.get("errors") if isinstance(result, dict) else None
    if not isinstance(errors, dict) or not errors:
        return f"status {result.get('status') if isinstance(result, dict) else result!r}"
    parts = []
    for name, detail in errors.items():
        code = detail.get("code") if isinstance(detail, dict) else detail
        parts.append(f"{name or 'file'}: {UPLOAD_ERRORS.get(code, f'error code {code}')}")
    return "; ".join(parts)


def opac_cover_url(opac_url: str, *, imagenumber: int | None, biblionumber: int) -> str:
    """A4: the public cover URL; by biblionumber (Koha serves the first cover) when the
    imagenumber is unknown. Anyone reads it (956$c in the OPAC), so credentials in `opac_url`
    are left out."""
    query = (
        {"imagenumber": imagenumber} if imagenumber is not None else {"biblionumber": biblionumber}
    )
    root = urlsplit(opac_url.rstrip("/"))
    root = root._replace(netloc=root.netloc.rpartition("@")[2])
    return f"{urlunsplit(root)}/cgi-bin/koha/opac-image.pl?{urlencode(query)}"
