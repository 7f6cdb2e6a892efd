"""``http_get``: fetch a URL as text, with a deadline, a size cap and an optional host allow-list.

The body is streamed and cut at ``max_bytes``, so a huge or endless response never sits in memory; the
result says when it was cut. Redirects are followed by hand, up to ``max_redirects``, and every hop is
checked like the first URL (scheme, allowed hosts), so a redirect cannot lead the tool somewhere it would
have refused to go. A 404 or a 500 is a result, not an error: the model reads the status and decides.

Errors come in two kinds. ``HttpGetRefused`` (a ``NonRetryableError``): the URL or the response is not
acceptable and asking again will not change that. ``HttpGetError``: the request failed on the way (a
timeout, a refused connection) and a retry may succeed.

Addresses that are not public (loopback, private networks, link-local such as the cloud metadata service at
169.254.169.254, carrier-grade NAT, reserved ranges) are refused unless ``allow_private=True`` or the host
is named in ``allowed_hosts``: a model steered by a web page it read must not be able to make the tool
fetch internal services. IP literals are checked as given; host names are resolved and every address they
resolve to is checked, before the first request and before each redirect. The connection resolves the name
again, so a DNS server that answers differently the second time (DNS rebinding) can get past the check;
``allowed_hosts`` has no such gap, so give an agent that reads untrusted text an allow-list. With a
``transport`` of the caller's (tests, a proxy) names are not resolved: the transport decides where a
request goes.
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import socket
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from agentflow import Tool, tool
from agentflow.errors import ConfigurationError, NonRetryableError

__all__ = ["HttpGetError", "HttpGetRefused", "HttpGetResult", "http_get", "make_http_get"]

# Content types read as text besides text/*: structured text formats an agent can use.
_TEXT_SUBTYPES = frozenset(
    {"json", "xml", "javascript", "ecmascript", "x-javascript", "x-www-form-urlencoded", "yaml", "x-yaml", "x-ndjson"}
)


class HttpGetError(Exception):
    """The request failed on the way (timeout, connection, protocol); a later retry may succeed."""


class HttpGetRefused(HttpGetError, NonRetryableError):
    """The URL or the response is refused (scheme, host, redirects, binary content); a retry will not help."""


class HttpGetResult(BaseModel):
    """What ``http_get`` fetched.

    ``url`` is the final URL, after redirects. ``text`` is the body decoded with the charset the server
    declared (UTF-8 otherwise), at most ``max_bytes`` of it; ``truncated`` is true when the body was longer.
    """

    model_config = ConfigDict(frozen=True)

    status_code: int
    url: str
    content_type: str | None
    text: str
    truncated: bool


def make_http_get(
    *,
    timeout: float = 10.0,
    max_bytes: int = 1_000_000,
    allowed_hosts: Iterable[str] | None = None,
    max_redirects: int = 5,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    allow_private: bool = False,
    name: str = "http_get",
) -> Tool:
    """An ``http_get`` tool with its own limits.

    ``timeout`` bounds the whole call, redirects and body included, in seconds. ``max_bytes`` caps the body
    read (after content decoding). ``allowed_hosts``, when given, is the exact list of host names the tool may
    reach, on the first URL and on every redirect. ``headers`` are sent with every request and win over
    headers the model asks for: the place for a User-Agent or an API key, which then stays out of the
    recorded arguments. They follow redirects (httpx drops only ``Authorization`` on a redirect to another
    origin), so pair secret headers with ``allowed_hosts`` and https:// URLs: with ``headers`` set, a redirect
    from https:// to plain http:// is refused, since it would send them unencrypted. ``transport`` replaces
    the network, for tests (``httpx.MockTransport``) or a custom client setup; the tool does not close it.
    ``allow_private=True`` lets the tool reach addresses that are not public (loopback, private networks,
    cloud metadata); hosts in ``allowed_hosts`` may be reached whatever their address.

    Headers a model asks for are checked before anything is sent: a name that is not an HTTP token, a
    value with a line break or another control character, and ``Host``, ``Content-Length`` or
    ``Transfer-Encoding`` are refused (``HttpGetRefused``); hop-by-hop headers (``Connection``,
    ``Upgrade``...) are left out.
    """
    if not timeout > 0:
        raise ConfigurationError(f"make_http_get: timeout must be a positive number of seconds, not {timeout!r}")
    if max_bytes < 1:
        raise ConfigurationError(f"make_http_get: max_bytes must be at least 1, not {max_bytes!r}")
    if max_redirects < 0:
        raise ConfigurationError(f"make_http_get: max_redirects must be 0 or more, not {max_redirects!r}")
    if isinstance(allowed_hosts, str):
        raise ConfigurationError(
            f"make_http_get: allowed_hosts is a set of host names, not one string: {{{allowed_hosts!r}}}"
        )
    hosts = None if allowed_hosts is None else frozenset(_normal_host(h) for h in allowed_hosts)
    fixed_headers = dict(headers or {})
    for header, value in fixed_headers.items():
        problem = _header_problem(header, value)
        if problem is not None:
            raise ConfigurationError(f"make_http_get: the header {header!r} cannot be sent: {problem}")
    borrowed = None if transport is None else _Borrowed(transport)
    # Where a URL may lead: its scheme and host, then (unless private addresses are allowed) its address.
    guard = _Guard(hosts, allow_private=allow_private, resolve=transport is None)

    async def http_get(url: str, headers: dict[str, str] | None = None) -> HttpGetResult:
        _checked_url(url, hosts)  # a malformed or refused URL is reported before anything else
        request_headers = _model_headers(headers or {})
        request_headers.update(fixed_headers)
        request_headers["Accept-Encoding"] = "gzip, deflate"  # what _Body can inflate under the size cap

        async def get() -> HttpGetResult:
            first = await guard.check(url)  # resolving the name counts against the deadline
            limits = (timeout, max_bytes, max_redirects)
            return await _fetch(first, request_headers, guard, *limits, borrowed, https_only=bool(fixed_headers))

        try:
            return await asyncio.wait_for(get(), timeout)
        except (asyncio.TimeoutError, TimeoutError, httpx.TimeoutException):
            raise HttpGetError(
                f"GET {url} timed out after {timeout:g} s; the server is slow or unreachable, try again later "
                "or another URL"
            ) from None

    description = (
        "Fetch a web page or an API response over HTTP(S) with a GET request and return its status code, "
        "final URL (after redirects), content type and text. Only http:// and https:// URLs; text content "
        f"only (HTML, JSON, XML, plain text). The text is cut after {max_bytes:,} bytes and `truncated` is then "
        "true. A 4xx or 5xx status is returned, not raised."
    )
    if hosts is not None:
        description += f" Only these hosts can be reached: {', '.join(sorted(hosts)) or 'none'}."
    if not allow_private:
        description += " Internal addresses (localhost, private networks, cloud metadata) are refused."
    return tool(name=name, description=description)(http_get)


# An RFC 7230 token: what a header name may be made of.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# Control characters (a horizontal tab aside): a CR or LF in a value would start another header.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers that say where the request goes and how its body is framed: http_get sets them (a GET has no
# body); a model's Host could also reach another site behind the address of an allowed one.
_REFUSED_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})
# Hop-by-hop headers: about the connection, which http_get manages; a model's are left out.
_HOP_BY_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"})


def _header_problem(name: str, value: str) -> str | None:
    """What makes a header unsendable, or None."""
    if not isinstance(name, str) or not isinstance(value, str):
        return "header names and values must be text"
    if not name.isascii() or not value.isascii():
        return "header names and values must be ASCII"
    if not _TOKEN.fullmatch(name):
        return "a header name is letters, digits and !#$%&'*+-.^_`|~ only, without spaces"
    if _CONTROL.search(value):
        return "its value holds a line break or another control character"
    return None


def _model_headers(headers: Mapping[str, str]) -> httpx.Headers:
    """The headers a model asked for, checked before anything is sent: an unsendable one is refused (a
    retry would send it again), as are Host, Content-Length and Transfer-Encoding; hop-by-hop headers
    (Connection, Keep-Alive...) are left out."""
    checked = httpx.Headers()
    for name, value in headers.items():
        problem = _header_problem(name, value)
        if problem is not None:
            raise HttpGetRefused(f"the header {name!r} cannot be sent: {problem}; fix it or leave it out")
        lowered = name.lower()
        if lowered in _REFUSED_HEADERS:
            raise HttpGetRefused(
                f"the header {name!r} is not for the caller to set (http_get sends it: a GET goes to the URL's "
                "host and has no body); call again without it"
            )
        if lowered not in _HOP_BY_HOP_HEADERS:
            checked[name] = value.strip(" \t")
    return checked


class _Guard:
    """Checks every URL the tool is about to request: the first one and each redirect."""

    def __init__(self, hosts: frozenset[str] | None, *, allow_private: bool, resolve: bool) -> None:
        self._hosts = hosts
        self._allow_private = allow_private
        self._resolve = resolve

    async def check(self, url: str | httpx.URL) -> httpx.URL:
        parsed = _checked_url(url, self._hosts)
        if self._allow_private or (self._hosts is not None and _normal_host(parsed.host) in self._hosts):
            return parsed
        host = parsed.host
        literal = _ip(host)
        if literal is not None:
            found = [(literal, f"{host} is")]
        elif self._resolve:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            found = [(address, f"{host!r} resolves to {address}, which is") for address in await _addresses(host, port)]
        else:  # a caller's transport decides where a name leads
            found = []
        for address, what in found:
            if not _public(address):
                raise HttpGetRefused(
                    f"{what} not a public address ({_kind(address)}); http_get does not reach internal addresses "
                    "unless the tool is made with allow_private=True or the host is in allowed_hosts"
                )
        return parsed


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not part of it
    except ValueError:
        return None


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and not _public(embedded):
            return False
    return address.is_global and not address.is_multicast


def _kind(address: IPAddress) -> str:
    checks = (
        ("loopback", address.is_loopback),
        ("link-local: cloud metadata lives there", address.is_link_local),
        ("a private network", address.is_private),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
    )
    return next((name for name, hit in checks if hit), "reserved, not routed on the internet")


async def _addresses(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to; a name that does not resolve is an ``HttpGetError``."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        raise HttpGetError(f"the host name {host!r} does not resolve ({exc}); check the URL") from None
    found = (_ip(str(info[4][0])) for info in infos)
    return [address for address in found if address is not None]


class _Borrowed(httpx.AsyncBaseTransport):
    """A caller's transport, used but never closed: closing the client after each call must not close it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _checked_url(url: str | httpx.URL, hosts: frozenset[str] | None) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise HttpGetRefused(f"{str(url)!r} is not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        scheme = f"the scheme {parsed.scheme!r}" if parsed.scheme else "a URL without a scheme"
        raise HttpGetRefused(f"only http:// and https:// URLs can be fetched, not {scheme}: {str(url)!r}")
    if not parsed.host:
        raise HttpGetRefused(f"{str(url)!r} has no host name")
    if hosts is not None and _normal_host(parsed.host) not in hosts:
        allowed = ", ".join(sorted(hosts)) or "none"
        raise HttpGetRefused(f"the host {parsed.host!r} is not allowed; the allowed hosts are: {allowed}")
    return parsed


async def _fetch(
    url: httpx.URL,
    headers: httpx.Headers,
    guard: _Guard,
    timeout: float,
    max_bytes: int,
    max_redirects: int,
    transport: httpx.AsyncBaseTransport | None,
    *,
    https_only: bool,
) -> HttpGetResult:
    """GET ``url``, following redirects by hand; with ``https_only``, a redirect from https:// to http://
    is refused (the headers the tool was made with would go unencrypted)."""
    async with httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False) as client:
        request = client.build_request("GET", url, headers=headers)
        for _ in range(max_redirects + 1):
            try:
                response = await client.send(request, stream=True)
            except httpx.TimeoutException:
                raise  # reported with the deadline by the caller
            except httpx.ConnectError as exc:
                raise HttpGetError(f"could not connect to {request.url.host!r} ({exc}); check the URL") from None
            except httpx.InvalidURL as exc:  # not an HTTPError: a redirect's Location httpx cannot parse
                raise HttpGetRefused(f"GET {url} was redirected to a URL that cannot be requested ({exc})") from None
            except httpx.RemoteProtocolError as exc:
                # Raised while httpx parsed a Location that is no URL ("http://[::1"): asking again won't help.
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, httpx.InvalidURL):
                    raise HttpGetRefused(
                        f"GET {request.url} was redirected to a URL that cannot be requested ({cause})"
                    ) from None
                raise HttpGetError(f"GET {request.url} failed: {type(exc).__name__}: {exc}") from None
            except httpx.HTTPError as exc:
                raise HttpGetError(f"GET {request.url} failed: {type(exc).__name__}: {exc}") from None
            try:
                if response.next_request is None:
                    return await _read(response, max_bytes)
                request = response.next_request
            finally:
                await response.aclose()
            if https_only and response.url.scheme == "https" and request.url.scheme == "http":
                raise HttpGetRefused(
                    f"{response.url} redirected to {request.url}, from https:// to plain http://, which would send "
                    "the tool's headers unencrypted; refused"
                )
            try:
                await guard.check(request.url)
            except HttpGetRefused as exc:
                raise HttpGetRefused(f"{response.url} redirected to {request.url}, which is refused: {exc}") from None
    raise HttpGetRefused(f"GET {url} was redirected more than {max_redirects} times; stopped following redirects")


async def _read(response: httpx.Response, max_bytes: int) -> HttpGetResult:
    content_type = response.headers.get("content-type")
    if not _is_text(content_type):
        raise HttpGetRefused(
            f"{response.url} answered with {content_type!r}, which is not text; http_get reads only text "
            "(HTML, JSON, XML, plain text)"
        )
    # A response built whole in memory (a test's httpx.Response(content=...)) was decoded when it was
    # made; one from a connection is read raw and inflated here, under the cap.
    whole = response.is_stream_consumed
    body = _Body(response, max_bytes, decoded=whole)
    try:
        async for raw in response.aiter_bytes() if whole else response.aiter_raw():
            if body.feed(raw):
                break
        else:
            body.finish()
    except httpx.TimeoutException:
        raise
    except httpx.HTTPError as exc:
        raise HttpGetError(f"reading the body of {response.url} failed: {type(exc).__name__}: {exc}") from None
    except zlib.error as exc:
        raise HttpGetError(
            f"the body of {response.url} does not decompress ({exc}); the server sent it damaged"
        ) from None
    return HttpGetResult(
        status_code=response.status_code,
        url=str(response.url),
        content_type=content_type,
        text=_decode(b"".join(body.chunks), response.charset_encoding, final=not body.truncated),
        truncated=body.truncated,
    )


class _Body:
    """A response body read up to ``max_bytes`` after content decoding. A compressed body is inflated in
    pieces no larger than the room left, so a few kilobytes that inflate to gigabytes (a zip bomb) never
    sit in memory: httpx's own decoding inflates each network chunk whole before a cap can apply."""

    def __init__(self, response: httpx.Response, max_bytes: int, *, decoded: bool) -> None:
        self.chunks: list[bytes] = []
        self.truncated = False
        self._room = max_bytes
        declared = "" if decoded else response.headers.get("content-encoding", "")
        encodings = [e.strip().lower() for e in declared.split(",") if e.strip()]
        encodings = [e for e in encodings if e != "identity"]
        if len(encodings) > 1:
            raise HttpGetRefused(f"{response.url} sent its body encoded {len(encodings)} times over "
                                 f"({', '.join(encodings)}); http_get decodes one gzip or deflate layer")  # fmt: skip
        self._encoding = encodings[0] if encodings else None
        if self._encoding in ("gzip", "x-gzip"):
            self._inflater: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self._encoding == "deflate":
            self._inflater = zlib.decompressobj()  # zlib-wrapped, unless the first two bytes say raw
            self._start: bytes | None = b""
        elif self._encoding is None:
            self._inflater = None
        else:
            raise HttpGetRefused(f"{response.url} sent its body encoded as {self._encoding!r}; http_get decodes "
                                 "gzip and deflate only (it asks for those)")  # fmt: skip

    def feed(self, raw: bytes) -> bool:
        """Take the next raw bytes; true once the cap is reached (the rest is not wanted)."""
        if self._inflater is None:
            return self._take(raw)
        data = self._inflate(raw)
        while not self._take(data):
            tail = self._inflater.unconsumed_tail
            if not tail:
                return False
            data = self._inflater.decompress(tail, self._room + 1)
        return True

    def finish(self) -> None:
        """The body ended: what the inflater still holds."""
        if self._inflater is not None:
            self._take(self._inflater.flush())

    def _inflate(self, raw: bytes) -> bytes:
        if self._encoding == "deflate" and self._start is not None:
            # zlib-wrapped or raw deflate (as many servers send it)? The first two bytes say: a zlib
            # header names method 8 and is a multiple of 31.
            self._start += raw
            if len(self._start) < 2:
                return b""
            raw, self._start = self._start, None
            if not (raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0):
                self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        return bytes(self._inflater.decompress(raw, self._room + 1))  # at most room + 1 bytes: never 0 (no cap)

    def _take(self, data: bytes) -> bool:
        if len(data) > self._room:
            self.chunks.append(data[: self._room])
            self._room = 0
            self.truncated = True
            return True
        self.chunks.append(data)
        self._room -= len(data)
        return False


def _is_text(content_type: str | None) -> bool:
    if not content_type:
        return True  # undeclared: try it as text
    mime = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    return kind == "text" or subtype in _TEXT_SUBTYPES or subtype.endswith(("+json", "+xml"))


def _decode(body: bytes, charset: str | None, *, final: bool) -> str:
    """The body as text, in the charset the server declared if it names a text encoding Python has, else
    (none, unknown, or one that cannot decode it) in UTF-8. The charset comes from the server: Python's
    codecs also hold bytes-to-bytes transforms (zlib, bz2, base64, hex, rot13...), which would inflate the
    capped body without a limit or not give text at all; those are not text encodings and are not used."""
    if charset:
        try:
            text_encoding = codecs.lookup(charset)._is_text_encoding
            decoder = codecs.getincrementaldecoder(charset)(errors="replace") if text_encoding else None
        except (LookupError, ValueError, TypeError):
            decoder = None
        if decoder is not None:
            # When the body was cut, a character split at the cut is dropped rather than shown as garbage.
            try:
                return _as_text(decoder.decode(body, final=final))
            except (ValueError, TypeError):  # UnicodeError: "idna" refuses errors="replace", "undefined" all
                pass
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(body, final=final)


def _as_text(decoded: object) -> str:
    if not isinstance(decoded, str):
        raise TypeError(f"the codec gave {type(decoded).__name__}, not text")
    return decoded


http_get = make_http_get()
