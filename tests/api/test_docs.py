"""/api/v1/docs: the API's reference as one page served by shelfwork itself, built from the
OpenAPI document, with no script and nothing loaded from another origin."""

from __future__ import annotations

from html.parser import HTMLParser

from .conftest import Api

METHODS = ("get", "post", "put", "patch", "delete")


class Page(HTMLParser):
    """What a browser would fetch or run: tags, and every URL-valued attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "data", "poster") and value:
                self.urls.append(value)
            if name == "id" and value:
                self.ids.add(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def read(shared_api: Api) -> tuple[Page, dict[str, str]]:
    answer = shared_api.client.get("/api/v1/docs")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    page = Page()
    page.feed(answer.text)
    return page, dict(answer.headers)


def test_the_docs_page_loads_nothing_from_anywhere_else(shared_api: Api) -> None:
    page, headers = read(shared_api)
    assert "script" not in page.tags and "iframe" not in page.tags
    for url in page.urls:
        assert url.startswith(("#", "/")) and not url.startswith("//"), url
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy.replace(
        "script-src 'none'", ""
    )


def test_the_docs_page_lists_every_operation_and_schema(shared_api: Api) -> None:
    spec = shared_api.client.get("/api/v1/openapi.json").json()  # still served
    page, _ = read(shared_api)
    text = " ".join(" ".join(page.text).split())
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                operation = item[method]
                assert f"{method.upper()} {path}" in text, (method, path)
                assert f"op-{operation['operationId']}" in page.ids
                if operation.get("summary"):
                    assert " ".join(operation["summary"].split()) in text
    for name, schema in spec["components"]["schemas"].items():
        assert f"schema-{name}" in page.ids, name
        for prop in schema.get("properties", {}):
            assert prop in text, (name, prop)
    assert "#schema-SubmitIn" in page.urls  # a request body links to its schema


def test_the_docs_page_escapes_what_it_shows(shared_api: Api) -> None:
    """Descriptions come from code, but a `<` in one must stay text, not become markup."""
    page, _ = read(shared_api)
    assert "Authorization: Bearer <token>" in " ".join(page.text)
