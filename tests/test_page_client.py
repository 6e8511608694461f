"""The page's copy of the TypeScript client (service/web/vendor/fal-jobs-client.js) is committed, so
`python3 -m service run` needs no Node; it must be exactly what the package builds today, or the page
would run code that the package's tests no longer cover."""

from __future__ import annotations

import tempfile
from pathlib import Path

from service.cli.node import PAGE_CLIENT, build_page_client


def test_committed_page_client_is_the_fresh_build() -> None:
    fresh = Path(tempfile.mkdtemp(prefix="fal-jobs-page-client-")) / "fal-jobs-client.js"
    build_page_client(fresh)
    assert PAGE_CLIENT.read_text() == fresh.read_text(), (
        f"{PAGE_CLIENT} differs from a fresh build of clients/js: rebuild it with "
        "`python -m service.cli.node page-client` (or `npm run build:page` in clients/js) and commit it"
    )

