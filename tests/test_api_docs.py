"""The API reference at /schema over plain HTTP, against the live service: every file it loads is
ours and answers with its type and a long cache; its CSP allows our origin only, with no inline
script; nothing on it points outside (so it works with no internet); every answer carries exactly
one Content-Security-Policy. `tests/browser/test_api_docs.py` opens it in Chromium."""

from __future__ import annotations

import gzip
import re
from html.parser import HTMLParser

import httpx

from service.http.security_headers import CONTENT_SECURITY_POLICY
from tests.conftest import RunningServer, bearer

EXPECTED_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png"}


class _Links(HTMLParser):
    """Every URL the page loads or links to, and whether it has an inline script or style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []  # (tag, url)
        self.inline: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.urls += [(tag, value) for name, value in attrs if name in {"src", "href", "action", "data"} and value]
        if any(name.startswith("on") or name == "style" for name, _ in attrs):
            self.inline.append(f"<{tag}> has an inline handler or style")
        self._tag = tag if tag in {"script", "style"} and "src" not in values else None

    def handle_data(self, data: str) -> None:
        if self._tag and data.strip():
            self.inline.append(f"inline <{self._tag}>: {data[:80]!r}")


def directives(policy: str) -> dict[str, list[str]]:
    parsed = [part.split() for part in policy.split(";") if part.strip()]
    return {words[0]: words[1:] for words in parsed}


async def test_the_reference_loads_only_our_files_under_a_same_origin_csp(
    service: RunningServer, http: httpx.AsyncClient,
) -> None:
    page = await http.get(f"{service.url}/schema")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    [policy] = page.headers.get_list("content-security-policy")
    csp = directives(policy)
    assert csp["script-src"] == ["'self'"], policy
    assert csp["default-src"] == ["'none'"], policy
    for name, sources in csp.items():
        assert "'unsafe-inline'" not in sources and "'unsafe-eval'" not in sources, (name, policy)
        # Our origin, data: images, 'none': no other host, no scheme-wide source (https: is any host).
        assert set(sources) <= {"'self'", "'none'", "data:"}, (name, policy)

    # Nothing on the page names another origin: with no network beyond the service, it all loads.
    assert not re.search(r"(?i)https?:|//[a-z0-9]", page.text), "the page names an outside URL"
    links = _Links()
    links.feed(page.text)
    assert not links.inline, links.inline
    scripts = [url for tag, url in links.urls if tag == "script"]
    assert len(scripts) == 2, links.urls  # Swagger UI, then our start-up file
    for tag, url in links.urls:
        assert url.startswith("/schema/"), (tag, url)
        answer = await http.get(service.url + url, headers={"Accept-Encoding": "identity"})
        assert answer.status_code == 200, (url, answer.text)
        suffix = url[url.rindex("."):]
        if tag == "a":  # the <noscript> link to the document itself
            assert url == "/schema/openapi.json" and answer.json()["info"]["title"] == "fal-jobs"
            continue
        assert answer.headers["content-type"] == EXPECTED_TYPES[suffix], url
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable", url
        assert answer.headers["x-content-type-options"] == "nosniff", url
        assert len(answer.headers.get_list("content-security-policy")) == 1, url
        if suffix in {".js", ".css"}:
            zipped = await http.get(service.url + url, headers={"Accept-Encoding": "gzip"})
            assert zipped.headers["content-encoding"] == "gzip" and zipped.content == answer.content, url
            assert gzip.decompress(await _raw_body(service, url)) == answer.content, url
    assert any("swagger-ui-bundle" in url for url in scripts) and any("api-docs" in url for url in scripts)


async def _raw_body(service: RunningServer, url: str) -> bytes:
    """The bytes as sent, gzip and all: httpx decodes `content` itself."""
    async with httpx.AsyncClient() as client, client.stream(
            "GET", service.url + url, headers={"Accept-Encoding": "gzip"}) as answer:
        return b"".join([chunk async for chunk in answer.aiter_raw()])


async def test_an_asset_name_is_its_content_and_an_unknown_one_is_a_404(
    service: RunningServer, http: httpx.AsyncClient,
) -> None:
    page = (await http.get(f"{service.url}/schema")).text
    [bundle] = re.findall(r'src="(/schema/assets/swagger-ui-bundle\.[0-9a-f]{12}\.js)"', page)
    refused = await http.get(service.url + bundle, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert refused.status_code == 200 and "content-encoding" not in refused.headers
    stale = re.sub(r"\.[0-9a-f]{12}\.js$", ".000000000000.js", bundle)
    for missing in (stale, "/schema/assets/swagger-ui-bundle.js", "/schema/assets/..%2Fapp.py"):
        answer = await http.get(service.url + missing)
        assert answer.status_code == 404, missing
        assert answer.json()["error"] == "not_found", missing


async def test_swagger_is_the_reference_and_the_renderers_we_do_not_ship_redirect_to_it(
    service: RunningServer, http: httpx.AsyncClient,
) -> None:
    reference = (await http.get(f"{service.url}/schema")).text
    assert (await http.get(f"{service.url}/schema/swagger")).text == reference
    for gone in ("redoc", "elements", "rapidoc"):
        answer = await http.get(f"{service.url}/schema/{gone}")
        assert answer.status_code == 302 and answer.headers["location"] == "/schema", gone
    for document in ("openapi.json", "openapi.yaml"):
        answer = await http.get(f"{service.url}/schema/{document}")
        assert answer.status_code == 200 and "fal-jobs" in answer.text, document


async def test_every_answer_carries_exactly_one_csp(service: RunningServer, http: httpx.AsyncClient, user: object) -> None:
    # The page's and the API's answers get the global policy; the reference keeps its own alone.
    # (Downloads, which set their own too, are checked in tests/test_outputs.py.)
    for path, status in [("/", 200), ("/healthz", 200), ("/api/jobs", 401), ("/nowhere", 404),
                         ("/schema/openapi.json", 200), ("/schema/nowhere", 404)]:
        answer = await http.get(service.url + path)
        assert answer.status_code == status, (path, answer.text)
        assert len(answer.headers.get_list("content-security-policy")) == 1, (path, answer.headers)
    [api] = (await http.get(f"{service.url}/api/jobs", headers=bearer(user))).headers.get_list(  # type: ignore[arg-type]
        "content-security-policy")
    assert api == CONTENT_SECURITY_POLICY
