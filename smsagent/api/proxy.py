"""Which proxy a request goes through, decided once per host.

The client's HTTP session does not read the environment itself (`trust_env`): aiohttp would
then open `~/.netrc` on every request, a file read on every poll of an idle agent. The same
rules apply, looked up once: the `proxy` setting, else `HTTPS_PROXY`/`HTTP_PROXY` with
`NO_PROXY`, with proxy credentials from the URL or `~/.netrc`.
"""

from __future__ import annotations

from typing import Optional

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

Route = tuple[Optional[URL], Optional[aiohttp.BasicAuth]]


class ProxyRoutes:
    """The proxy (and its credentials) for each scheme, host and port, looked up once.

    Args:
        proxy: the `proxy` setting; when set it is used for every request.
    """

    def __init__(self, proxy: Optional[str] = None) -> None:
        self._fixed: Optional[URL] = URL(proxy) if proxy else None
        self._routes: dict[tuple[str, str, Optional[int]], Route] = {}

    def for_url(self, url: str) -> Route:
        """The proxy and its credentials for a request to `url` (None, None: go direct)."""
        if self._fixed is not None:
            return self._fixed, None
        parsed = URL(url, encoded=True)
        key = (parsed.scheme, parsed.host or "", parsed.port)
        route = self._routes.get(key)
        if route is None:
            try:
                route = get_env_proxy_for_url(parsed)
            except LookupError:
                route = (None, None)
            self._routes[key] = route
        return route
