"""Security headers on every answer, the page and its static files included: no framing, no
sniffing, no referrer leaving the site; HSTS once the public URL is https.

Computed once per app and added by the request-log middleware, which wraps the whole app, so the
router's own 404 and 405 carry them too. Not Litestar's `response_headers`: those are resolved
once per route handler and kept on it, so two apps in one process (tests, a second
configuration) would share the first one's, and the router's answers would have none.

The CSP here is the default: an answer that sets its own (a download, the API reference at
/schema, see service.http.api_docs) keeps that one alone.
"""

from __future__ import annotations

from service.settings import Settings

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' http: https: data:; media-src 'self' http: https:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


def security_headers(settings: Settings) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]
    if settings.is_https:
        headers.append((b"strict-transport-security", b"max-age=63072000"))
    return headers
