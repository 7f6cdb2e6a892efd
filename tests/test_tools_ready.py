"""The ready tools in ``agentflow.tools``: calculator, http_get, FileSandbox.

No test touches the network: ``http_get`` runs on ``httpx.MockTransport``. Async tools are called with
``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import agentflow.tools
from agentflow import AgentFlow, ConfigurationError, Context, NonRetryableError, RetryPolicy, ToolArgumentsError
from agentflow.tools import (
    CalculatorError,
    FileSandbox,
    FileSandboxError,
    HttpGetError,
    HttpGetRefused,
    HttpGetResult,
    calculator,
    http_get,
    make_http_get,
)


def test_the_exported_names_are_pinned() -> None:
    assert sorted(agentflow.tools.__all__) == [
        "CalculatorError",
        "FileSandbox",
        "FileSandboxError",
        "HttpGetError",
        "HttpGetRefused",
        "HttpGetResult",
        "calculator",
        "http_get",
        "make_http_get",
    ]


def test_import_agentflow_does_not_import_the_tools_or_httpx() -> None:
    code = (
        "import sys, json, agentflow; print(json.dumps([m for m in ('agentflow.tools', 'httpx') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


# -- calculator ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2*21", 42),
        ("2 + 3 * 4", 14),
        ("(2 + 3) * 4", 20),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("2 ** 10", 1024),
        ("-2 ** 2", -4),
        ("+5 - -5", 10),
        ("1 / 4", 0.25),
        ("sqrt(16) + abs(-3)", 7.0),
        ("round(pi, 2)", 3.14),
        ("round(2.7)", 3),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("exp(0) + cos(0) + sin(0) + tan(0)", 2.0),
        ("floor(2.5) + ceil(2.5)", 5),
        ("min(3, 1, 2) + max(4, 5)", 6),
        ("10**999 // 10**998", 10),
        ("  1.5e3 ", 1500.0),
    ],
)
def test_calculator_computes_the_value_of_arithmetic(expression: str, expected: float) -> None:
    result = calculator(expression=expression)
    assert result == pytest.approx(expected)
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("__import__('os')", "'__import__' is not an available function"),
        ("().__class__", "attribute access"),
        ("(1).__class__", "attribute access"),
        ("[x for x in ()]", "comprehensions"),
        ("(x for x in (1,))", "generator expressions"),
        ("lambda: 1", "lambdas"),
        ("(1, 2)", "tuples"),
        ("abs[0]", "subscripts"),
        ("x + 1", "unknown name 'x'"),
        ("open", "unknown name 'open'"),
        ("sqrt", "sqrt is a function"),
        ("'a' * 3", "'a' is not a number"),
        ("True + 1", "True is not a number"),
        ("2j", "complex number"),
        ("1 < 2", "comparisons"),
        ("1 and 2", "'and' / 'or'"),
        ("(y := 2)", "assignments"),
        ("2 ^ 3", "write 2**3 for powers"),
        ("1 << 2", "shift"),
        ("~1", "bitwise not"),
        ("abs(x=1)", "keyword arguments"),
        ("min()", "takes 1 or more argument(s), not 0"),
        ("sqrt(1, 2)", "takes 1 argument(s), not 2"),
        ("1 +", "not a valid expression"),
        ("", "empty"),
    ],
)
def test_calculator_refuses_anything_but_arithmetic_naming_the_construct(expression: str, named: str) -> None:
    with pytest.raises(CalculatorError) as caught:
        calculator(expression=expression)
    assert named in str(caught.value)


def test_calculator_refuses_a_huge_power_before_computing_it() -> None:
    # 9**(9**9) has about 370 million digits: computing it first would hang the test.
    with pytest.raises(CalculatorError, match="has more than 1000 digits"):
        calculator(expression="9**9**9")
    with pytest.raises(CalculatorError, match="more than 1000 digits"):
        calculator(expression="10**1000")
    assert calculator(expression="10**999") == 10**999


@pytest.mark.parametrize("expression", ["1/0", "5 // 0", "5 % 0", "1.0 / 0.0", "0 ** -1"])
def test_calculator_division_by_zero_is_a_clear_error(expression: str) -> None:
    with pytest.raises(CalculatorError, match="divides by zero"):
        calculator(expression=expression)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1e308 * 10", "overflows"),
        ("1e999", "overflows"),
        ("exp(1000)", "overflows"),
        ("sqrt(-1)", r"sqrt\(-1\) is undefined"),
        ("log(0)", r"log\(0\) is undefined"),
        ("(-8) ** 0.5", "not a real number"),
        ("round(1.5, 0.5)", "whole number"),
        ("round(5, -10**9)", "whole number"),
    ],
)
def test_calculator_values_outside_the_reals_or_the_limits_are_errors(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError, match=message):
        calculator(expression=expression)


def test_calculator_refuses_overlong_and_deeply_nested_expressions() -> None:
    with pytest.raises(CalculatorError, match="the limit is 1000"):
        calculator(expression="1+" * 500 + "1")
    with pytest.raises(CalculatorError, match="nested more than 100 levels"):
        calculator(expression="-" * 150 + "1")


def test_calculator_adds_a_flat_chain_of_hundreds_of_terms_yet_refuses_real_nesting_and_huge_powers() -> None:
    prices = [f"{i % 10}.5" for i in range(140)]  # a model adding up 140 line items: flat, not nested
    assert calculator(expression=" + ".join(prices)) == pytest.approx(sum(float(p) for p in prices))
    assert calculator(expression="-".join(["1"] * 300)) == -298  # left to right, as written
    assert calculator(expression="2 * 3 + 4 * 5 - 6 / 3 + 2 ** 3 ** 2") == 24 + 512
    with pytest.raises(CalculatorError, match="nested more than 100 levels"):
        calculator(expression="1+(" * 120 + "1" + ")" * 120)
    for huge in ("9**9**9", "1 + " * 100 + "9**9**9", "9**9**9 + 1" + " + 1" * 100):
        with pytest.raises(CalculatorError, match="more than 1000 digits"):
            calculator(expression=huge)


def test_calculator_schema_asks_for_an_expression_and_validate_rejects_anything_else() -> None:
    declared = calculator.schema()["function"]
    assert declared["name"] == "calculator"
    assert "sqrt" in declared["description"]
    assert declared["parameters"]["properties"] == {"expression": {"type": "string"}}
    assert declared["parameters"]["required"] == ["expression"]
    assert calculator.validate({"expression": "1+1"}) == {"expression": "1+1"}
    for bad in ({}, {"expression": 12}, {"expression": "1", "mode": "python"}):
        with pytest.raises(ToolArgumentsError):
            calculator.validate(bad)


# -- http_get -----------------------------------------------------------------------------------------


Handler = Callable[[httpx.Request], httpx.Response]


def recording(handler: Handler) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A MockTransport that keeps the requests it answered."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(answer), seen


class CountingBody:
    """An async body of ``chunks`` chunks of ``size`` bytes that counts how many were pulled."""

    def __init__(self, chunks: int, size: int) -> None:
        self.chunks = chunks
        self.size = size
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.pulled += 1
            yield b"x" * self.size


def fetch(tool: Any, **arguments: Any) -> HttpGetResult:
    result = asyncio.run(tool(**arguments))
    assert isinstance(result, HttpGetResult)
    return result


def test_http_get_returns_status_final_url_content_type_and_text() -> None:
    transport, seen = recording(
        lambda r: httpx.Response(200, headers={"content-type": "text/plain; charset=utf-8"}, text="hello")
    )
    get = make_http_get(transport=transport)
    result = fetch(get, url="https://example.com/a?q=1", headers={"Accept": "text/plain"})
    assert result == HttpGetResult(
        status_code=200,
        url="https://example.com/a?q=1",
        content_type="text/plain; charset=utf-8",
        text="hello",
        truncated=False,
    )
    assert [(r.method, str(r.url), r.headers["accept"]) for r in seen] == [
        ("GET", "https://example.com/a?q=1", "text/plain")
    ]


def test_http_get_returns_an_error_status_as_a_result_not_an_exception() -> None:
    transport, _ = recording(lambda r: httpx.Response(404, headers={"content-type": "text/html"}, text="no page"))
    result = fetch(make_http_get(transport=transport), url="http://example.com/missing")
    assert (result.status_code, result.text) == (404, "no page")


def test_http_get_cuts_a_large_streamed_body_at_max_bytes_without_reading_the_rest() -> None:
    body = CountingBody(chunks=10_000, size=1000)  # 10 MB, if it were all read
    transport, _ = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, content=body))
    result = fetch(make_http_get(max_bytes=10_500, transport=transport), url="https://example.com/big")
    assert result.truncated is True
    assert len(result.text) == 10_500
    assert body.pulled == 11


def test_http_get_a_body_exactly_at_the_limit_is_not_truncated() -> None:
    transport, _ = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="x" * 100))
    result = fetch(make_http_get(max_bytes=100, transport=transport), url="https://example.com/")
    assert (len(result.text), result.truncated) == (100, False)


def test_http_get_decodes_the_declared_charset_and_drops_a_character_split_by_the_cut() -> None:
    transport, _ = recording(
        lambda r: httpx.Response(200, headers={"content-type": "text/plain; charset=utf-8"}, content="é" * 10)
    )
    result = fetch(make_http_get(max_bytes=5, transport=transport), url="https://example.com/")
    assert (result.text, result.truncated) == ("éé", True)

    latin = httpx.MockTransport(
        lambda r: httpx.Response(200, headers={"content-type": "text/plain; charset=latin-1"}, content=b"caf\xe9")
    )
    assert fetch(make_http_get(transport=latin), url="https://example.com/").text == "café"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "javascript:alert(1)", "example.com/no-scheme", "http://"]
)
def test_http_get_refuses_urls_that_are_not_http_or_https(url: str) -> None:
    transport, seen = recording(lambda r: httpx.Response(200, text="should not be fetched"))
    with pytest.raises(HttpGetRefused) as caught:
        fetch(make_http_get(transport=transport), url=url)
    assert "http" in str(caught.value)
    assert seen == []


def test_http_get_refuses_a_host_not_in_allowed_hosts_and_reaches_the_allowed_ones() -> None:
    transport, seen = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="ok"))
    get = make_http_get(allowed_hosts={"Docs.Example.com"}, transport=transport)
    with pytest.raises(HttpGetRefused, match=r"'evil\.test' is not allowed; the allowed hosts are: docs\.example\.com"):
        fetch(get, url="https://evil.test/steal")
    with pytest.raises(HttpGetRefused, match="not allowed"):
        fetch(get, url="https://example.com/")  # a parent domain is another host
    assert seen == []
    assert fetch(get, url="https://docs.example.com/page").text == "ok"
    assert "docs.example.com" in get.description


def test_http_get_follows_redirects_and_reports_the_final_url() -> None:
    def site(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a":
            return httpx.Response(302, headers={"location": "/b"})
        if request.url.path == "/b":
            return httpx.Response(301, headers={"location": "https://other.example/c"})
        return httpx.Response(200, headers={"content-type": "text/plain"}, text="arrived")

    transport, seen = recording(site)
    result = fetch(make_http_get(transport=transport), url="https://example.com/a")
    assert (result.url, result.text) == ("https://other.example/c", "arrived")
    assert [str(r.url) for r in seen] == [
        "https://example.com/a",
        "https://example.com/b",
        "https://other.example/c",
    ]


def test_http_get_stops_after_max_redirects() -> None:
    transport, seen = recording(lambda r: httpx.Response(302, headers={"location": "/again"}))
    with pytest.raises(HttpGetRefused, match="redirected more than 3 times"):
        fetch(make_http_get(max_redirects=3, transport=transport), url="https://example.com/loop")
    assert len(seen) == 4


@pytest.mark.parametrize("location", ["https://evil.test/x", "file:///etc/passwd"])
def test_http_get_refuses_a_redirect_it_would_refuse_as_a_url(location: str) -> None:
    transport, seen = recording(lambda r: httpx.Response(302, headers={"location": location}))
    get = make_http_get(allowed_hosts={"example.com"}, transport=transport)
    with pytest.raises(HttpGetRefused, match=r"redirected to .*, which is refused"):
        fetch(get, url="https://example.com/start")
    assert [str(r.url) for r in seen] == ["https://example.com/start"]


INTERNAL_URLS = [
    "http://127.0.0.1:8080/admin",
    "http://169.254.169.254/latest/meta-data/iam",  # the cloud metadata service
    "http://10.0.0.5/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://0.0.0.0/",
    "http://[::1]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4 loopback written as IPv6
    "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
    "http://224.0.0.1/",  # multicast
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_http_get_refuses_internal_addresses_before_any_request(url: str) -> None:
    transport, seen = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="secret"))
    with pytest.raises(HttpGetRefused, match="not a public address") as caught:
        fetch(make_http_get(transport=transport), url=url)
    assert "allow_private=True" in str(caught.value)
    assert seen == []
    assert "Internal addresses" in make_http_get(transport=transport).description


def test_http_get_reaches_internal_addresses_when_allowed_or_named_in_allowed_hosts() -> None:
    transport, seen = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="ok"))
    assert fetch(make_http_get(transport=transport, allow_private=True), url="http://127.0.0.1:8080/").text == "ok"
    named = make_http_get(transport=transport, allowed_hosts={"10.0.0.5", "example.com"})
    assert fetch(named, url="http://10.0.0.5/health").text == "ok"
    assert [str(r.url) for r in seen] == ["http://127.0.0.1:8080/", "http://10.0.0.5/health"]
    assert "Internal addresses" not in make_http_get(transport=transport, allow_private=True).description


def test_http_get_refuses_a_redirect_to_an_internal_address() -> None:
    transport, seen = recording(
        lambda r: httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})
    )
    with pytest.raises(HttpGetRefused, match=r"redirected to http://169\.254\.169\.254/.*not a public address"):
        fetch(make_http_get(transport=transport), url="https://example.com/start")
    assert [str(r.url) for r in seen] == ["https://example.com/start"]


def fake_resolver(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Replace name resolution (what the event loop's getaddrinfo calls) with ``answers``; returns the names
    asked for. Nothing is looked up on the network."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(-2, "Name or service not known")
        family = {True: socket.AF_INET6, False: socket.AF_INET}
        return [(family[":" in a], socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr("socket.getaddrinfo", getaddrinfo)
    return asked


def test_http_get_refuses_a_host_name_that_resolves_to_an_internal_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # One public and one internal address: the internal one is enough to refuse (the connection could use it).
    asked = fake_resolver(monkeypatch, {"intranet.example": ["93.184.216.34", "10.1.2.3"]})
    with pytest.raises(HttpGetRefused, match=r"'intranet\.example' resolves to 10\.1\.2\.3, which is not a public"):
        fetch(make_http_get(), url="http://intranet.example/payroll")
    assert asked == ["intranet.example"]


def test_http_get_a_host_name_that_does_not_resolve_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_resolver(monkeypatch, {})
    with pytest.raises(HttpGetError, match=r"the host name 'nowhere\.example' does not resolve") as caught:
        fetch(make_http_get(), url="https://nowhere.example/")
    assert not isinstance(caught.value, HttpGetRefused)  # DNS may answer later: a retry is allowed


def test_http_get_with_a_transport_of_its_own_does_not_resolve_names(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_resolver(monkeypatch, {})
    transport, _ = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="ok"))
    assert fetch(make_http_get(transport=transport), url="https://example.com/").text == "ok"
    assert asked == []


def test_http_get_timeout_is_a_retryable_error_naming_the_deadline() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with pytest.raises(HttpGetError, match=r"GET https://example.com/ timed out after 2 s") as caught:
        fetch(make_http_get(timeout=2, transport=httpx.MockTransport(slow)), url="https://example.com/")
    assert not isinstance(caught.value, NonRetryableError)


def test_http_get_deadline_covers_a_body_that_never_ends() -> None:
    async def drip() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()  # the server stops sending but keeps the connection open
        yield b"never"

    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, content=drip())
    )
    with pytest.raises(HttpGetError, match=r"timed out after 0\.01 s"):
        fetch(make_http_get(timeout=0.01, transport=transport), url="https://example.com/")


def test_http_get_connection_refused_is_a_retryable_error() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(HttpGetError, match=r"could not connect to 'example\.com'.*Connection refused") as caught:
        fetch(make_http_get(transport=httpx.MockTransport(down)), url="https://example.com/")
    assert not isinstance(caught.value, NonRetryableError)


def test_http_get_refuses_binary_content_without_reading_the_body() -> None:
    body = CountingBody(chunks=10, size=1000)
    transport, _ = recording(lambda r: httpx.Response(200, headers={"content-type": "image/png"}, content=body))
    with pytest.raises(HttpGetRefused, match="'image/png', which is not text"):
        fetch(make_http_get(transport=transport), url="https://example.com/cat.png")
    assert body.pulled == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/ld+json", "text/html", "application/xml"])
def test_http_get_reads_text_like_content_types(content_type: str) -> None:
    transport, _ = recording(lambda r: httpx.Response(200, headers={"content-type": content_type}, text="{}"))
    assert fetch(make_http_get(transport=transport), url="https://example.com/").text == "{}"


def test_http_get_operator_headers_win_over_the_headers_the_model_asks_for() -> None:
    transport, seen = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="ok"))
    get = make_http_get(headers={"X-Api-Key": "operator-secret"}, transport=transport)
    fetch(get, url="https://example.com/", headers={"x-api-key": "forged", "Accept": "application/json"})
    assert seen[0].headers.get_list("x-api-key") == ["operator-secret"]
    assert seen[0].headers["accept"] == "application/json"


@pytest.mark.parametrize(
    ("headers", "refusal"),
    [
        ({"X-Trace": "a\r\nInjected: 1"}, r"'X-Trace' cannot be sent: its value holds a line break"),
        ({"X-Trace": "a\x00b"}, r"'X-Trace' cannot be sent: its value holds a line break or another control"),
        ({"Bad Name": "v"}, r"'Bad Name' cannot be sent: a header name is letters, digits"),
        ({"X-Name:": "v"}, r"'X-Name:' cannot be sent"),
        ({"": "v"}, r"'' cannot be sent"),
        ({"X-Caf\u00e9": "v"}, r"must be ASCII"),
        ({"Content-Length": "5"}, r"'Content-Length' is not for the caller to set"),
        ({"transfer-encoding": "chunked"}, r"'transfer-encoding' is not for the caller to set"),
        ({"Host": "internal.example"}, r"'Host' is not for the caller to set"),
    ],
)
def test_http_get_refuses_headers_from_the_model_it_cannot_or_must_not_send_before_any_request(
    headers: dict[str, str], refusal: str
) -> None:
    transport, seen = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="ok"))
    with pytest.raises(HttpGetRefused, match=refusal):  # a refusal: a retry would send the same headers
        fetch(make_http_get(transport=transport), url="https://example.com/", headers=headers)
    assert seen == []


def test_http_get_leaves_out_hop_by_hop_headers_from_the_model_and_trims_values() -> None:
    transport, seen = recording(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="ok"))
    model_headers = {"Connection": "close, X-Drop", "Upgrade": "websocket", "TE": "trailers", "Accept": " text/plain "}
    fetch(make_http_get(transport=transport), url="https://example.com/", headers=model_headers)
    sent = seen[0].headers
    assert (sent["accept"], sent["connection"]) == ("text/plain", "keep-alive")  # httpx's own Connection
    assert "upgrade" not in sent and "te" not in sent


def test_make_http_get_refuses_fixed_headers_that_cannot_be_sent() -> None:
    with pytest.raises(ConfigurationError, match=r"the header 'X-Api-Key' cannot be sent: its value holds a line"):
        make_http_get(headers={"X-Api-Key": "sk-1\n"})


def test_http_get_refuses_a_redirect_from_https_to_http_when_it_sends_headers_of_its_own() -> None:
    def site(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            return httpx.Response(302, headers={"location": "http://api.example.com/plain"})
        return httpx.Response(200, headers={"content-type": "text/plain"}, text="in clear")

    transport, seen = recording(site)
    keyed = make_http_get(transport=transport, allowed_hosts={"api.example.com"}, headers={"X-Api-Key": "sk-secret"})
    with pytest.raises(HttpGetRefused, match=r"from https:// to plain http://, which would send the tool's headers"):
        fetch(keyed, url="https://api.example.com/start")
    assert [str(r.url) for r in seen] == ["https://api.example.com/start"]  # the key never went in clear text

    seen.clear()  # without headers of its own there is nothing to protect: the redirect is followed
    plain = fetch(make_http_get(transport=transport), url="https://api.example.com/start")
    assert (plain.url, plain.text) == ("http://api.example.com/plain", "in clear")


@pytest.mark.parametrize(
    "charset", ["zlib", "bz2", "base64", "rot13", "hex", "uu", "quopri", "idna", "undefined", "utf-16", "no-such"]
)
def test_http_get_decodes_as_utf8_when_the_charset_is_no_text_encoding_or_cannot_decode_the_body(
    charset: str,
) -> None:
    body = zlib.compress("héllo ".encode() * 1000) if charset == "zlib" else "héllo wörld".encode()
    headers = {"content-type": f"text/plain; charset={charset}"}
    transport, _ = recording(lambda r: httpx.Response(200, headers=headers, content=body))
    result = fetch(make_http_get(transport=transport), url="https://example.com/")
    assert result.text == body.decode("utf-8", errors="replace")  # not inflated, not transformed


def test_http_get_does_not_close_the_transport_it_was_given() -> None:
    class Tracked(httpx.MockTransport):
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    transport = Tracked(lambda r: httpx.Response(200, headers={"content-type": "text/plain"}, text="ok"))
    get = make_http_get(transport=transport)
    assert [fetch(get, url="https://example.com/").text for _ in range(2)] == ["ok", "ok"]
    assert transport.closed is False


def test_http_get_schema_describes_url_and_headers_and_validate_rejects_bad_arguments() -> None:
    declared = http_get.schema()["function"]
    assert declared["name"] == "http_get"
    assert "1,000,000 bytes" in declared["description"]
    properties = declared["parameters"]["properties"]
    assert set(properties) == {"url", "headers"}
    assert properties["url"]["type"] == "string"
    assert declared["parameters"]["required"] == ["url"]
    assert http_get.validate({"url": "https://example.com"}) == {"url": "https://example.com", "headers": None}
    # The model cannot raise the limits: they are not arguments.
    for bad in ({}, {"url": 3}, {"url": "https://x", "headers": {"a": 1}}, {"url": "https://x", "timeout": 600}):
        with pytest.raises(ToolArgumentsError):
            http_get.validate(bad)


@pytest.mark.parametrize(
    "limits",
    [{"timeout": 0}, {"timeout": -1.0}, {"max_bytes": 0}, {"max_redirects": -1}, {"allowed_hosts": "example.com"}],
    ids=str,
)
def test_make_http_get_refuses_unusable_limits(limits: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        make_http_get(**limits)


# -- FileSandbox --------------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path: Path) -> FileSandbox:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret")
    return FileSandbox(tmp_path / "root", max_bytes=100, max_entries=5)


def everything_under(folder: Path) -> dict[str, bytes | None]:
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_write_then_read_round_trips_and_creates_parent_folders(sandbox: FileSandbox) -> None:
    assert sandbox.write_file(path="notes/day 1/plan.md", content="# Plan\nrésumé") == (
        "wrote 15 bytes to notes/day 1/plan.md"
    )
    assert (sandbox.root / "notes" / "day 1" / "plan.md").read_text() == "# Plan\nrésumé"
    assert sandbox.read_file(path="notes/day 1/plan.md") == "# Plan\nrésumé"
    assert sandbox.read_file(path="./notes/day 1/plan.md") == "# Plan\nrésumé"


def test_writing_again_replaces_the_file(sandbox: FileSandbox) -> None:
    sandbox.write_file(path="a.txt", content="first, longer")
    sandbox.write_file(path="a.txt", content="second")
    assert sandbox.read_file(path="a.txt") == "second"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../x", "goes up with '..'"),
        ("a/../../x", "goes up with '..'"),
        ("../outside/secret.txt", "goes up with '..'"),
        ("", "the path is empty"),
        ("a\x00b", "NUL"),
    ],
)
def test_paths_leading_outside_the_sandbox_are_refused_and_nothing_is_written(
    sandbox: FileSandbox, tmp_path: Path, path: str, message: str
) -> None:
    before = everything_under(tmp_path)
    with pytest.raises(FileSandboxError, match=message):
        sandbox.write_file(path=path, content="pwned")
    with pytest.raises(FileSandboxError, match=message):
        sandbox.read_file(path=path)
    assert everything_under(tmp_path) == before


def test_absolute_paths_are_refused_for_reading_and_writing(sandbox: FileSandbox, tmp_path: Path) -> None:
    before = everything_under(tmp_path)
    with pytest.raises(FileSandboxError, match="is an absolute path"):
        sandbox.read_file(path="/etc/passwd")
    with pytest.raises(FileSandboxError, match="is an absolute path"):
        sandbox.read_file(path=str(tmp_path / "outside" / "secret.txt"))
    with pytest.raises(FileSandboxError, match="is an absolute path"):
        sandbox.write_file(path=str(tmp_path / "outside" / "new.txt"), content="pwned")
    with pytest.raises(FileSandboxError, match="is an absolute path"):
        sandbox.list_files(folder="/")
    assert everything_under(tmp_path) == before


def test_a_symlink_pointing_outside_is_refused_and_nothing_is_written(sandbox: FileSandbox, tmp_path: Path) -> None:
    (sandbox.root / "exit").symlink_to(tmp_path / "outside", target_is_directory=True)
    (sandbox.root / "secret-link.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    before = everything_under(tmp_path / "outside")
    for path in ("exit/secret.txt", "secret-link.txt"):
        with pytest.raises(FileSandboxError, match="leads outside the sandbox folder"):
            sandbox.read_file(path=path)
    for path in ("exit/new.txt", "exit/deeper/new.txt", "secret-link.txt"):
        with pytest.raises(FileSandboxError, match="leads outside the sandbox folder"):
            sandbox.write_file(path=path, content="pwned")
    with pytest.raises(FileSandboxError, match="leads outside the sandbox folder"):
        sandbox.list_files(folder="exit")
    assert everything_under(tmp_path / "outside") == before


def test_a_symlink_inside_the_sandbox_is_followed(sandbox: FileSandbox) -> None:
    sandbox.write_file(path="real/data.txt", content="inside")
    (sandbox.root / "alias").symlink_to(sandbox.root / "real", target_is_directory=True)
    assert sandbox.read_file(path="alias/data.txt") == "inside"


def test_reading_a_missing_file_is_a_clear_error(sandbox: FileSandbox) -> None:
    with pytest.raises(FileSandboxError, match=r"there is no file 'nope\.txt'; list_files shows"):
        sandbox.read_file(path="nope.txt")
    with pytest.raises(FileSandboxError, match=r"there is no file 'no/such/dir\.txt'"):
        sandbox.read_file(path="no/such/dir.txt")


def test_reading_a_folder_or_a_non_utf8_file_is_a_clear_error(sandbox: FileSandbox) -> None:
    (sandbox.root / "folder").mkdir()
    (sandbox.root / "image.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FileSandboxError, match="is a folder"):
        sandbox.read_file(path="folder")
    with pytest.raises(FileSandboxError, match="is a folder"):
        sandbox.write_file(path="folder", content="x")
    with pytest.raises(FileSandboxError, match="not UTF-8 text"):
        sandbox.read_file(path="image.bin")


def test_reads_and_writes_over_the_size_limit_are_refused(sandbox: FileSandbox) -> None:
    (sandbox.root / "big.txt").write_text("x" * 101)
    with pytest.raises(FileSandboxError, match="larger than the 100-byte read limit"):
        sandbox.read_file(path="big.txt")
    with pytest.raises(FileSandboxError, match="the content is 101 bytes; the write limit is 100 bytes"):
        sandbox.write_file(path="new.txt", content="x" * 101)
    assert not (sandbox.root / "new.txt").exists()
    (sandbox.root / "limit.txt").write_text("x" * 100)
    assert sandbox.read_file(path="limit.txt") == "x" * 100


def test_list_files_lists_files_recursively_as_sorted_relative_paths(sandbox: FileSandbox, tmp_path: Path) -> None:
    for path in ("b.txt", "a/z.txt", "a/b/c.txt"):
        sandbox.write_file(path=path, content=".")
    (sandbox.root / "exit").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert sandbox.list_files() == ["a/b/c.txt", "a/z.txt", "b.txt"]
    assert sandbox.list_files(folder="a") == ["a/b/c.txt", "a/z.txt"]
    with pytest.raises(FileSandboxError, match="is not a folder"):
        sandbox.list_files(folder="b.txt")


def test_list_files_refuses_a_listing_over_max_entries(sandbox: FileSandbox) -> None:
    for n in range(6):
        sandbox.write_file(path=f"many/{n}.txt", content=".")
    with pytest.raises(FileSandboxError, match="more than 5 files; list a subfolder"):
        sandbox.list_files()


def test_a_lone_surrogate_in_a_path_or_a_content_is_a_sandbox_error(sandbox: FileSandbox) -> None:
    # Half an emoji ("\ud83d"), as a model cut at a token boundary writes it: no file name nor UTF-8 text.
    for call in (
        lambda: sandbox.read_file(path="notes\ud83d.txt"),
        lambda: sandbox.write_file(path="notes\ud83d.txt", content="x"),
        lambda: sandbox.list_files(folder="\ud83d"),
    ):
        with pytest.raises(FileSandboxError, match=r"the path '.*\\ud83d.*' holds half of a character"):
            call()
    with pytest.raises(FileSandboxError, match="the content holds half of a character"):
        sandbox.write_file(path="notes.txt", content="done \ud83d")
    assert list(sandbox.root.iterdir()) == []


def test_a_file_name_too_long_is_a_sandbox_error_that_does_not_show_where_the_sandbox_is(
    sandbox: FileSandbox, app: AgentFlow
) -> None:
    name = "x" * 300  # longer than a file name may be (255 bytes on most file systems)
    for call, verb in (
        (lambda: sandbox.write_file(path=name, content="hi"), "write"),
        (lambda: sandbox.read_file(path=name), "read"),
        (lambda: sandbox.list_files(folder=name), "list"),
    ):
        with pytest.raises(FileSandboxError, match=f"cannot {verb} '{name}': File name too long") as caught:
            call()
        assert str(sandbox.root) not in str(caught.value)

    @app.workflow()
    async def write(ctx: Context) -> list[Any]:
        result = await ctx.tool(sandbox.write_file, path=name, content="hi", retry=RetryPolicy(max_attempts=3, delay=0))
        return [result.ok, result.error]

    run = app.run(write)
    assert run.status == "completed", run.error
    assert run.output[0] is False and run.output[1].startswith("FileSandboxError: cannot write")
    assert [s.attempt for s in app.get_run(run.id).steps] == [1]  # a refusal, not retried


def test_list_files_shows_a_name_that_is_not_utf8_with_replacement_characters(
    sandbox: FileSandbox, app: AgentFlow
) -> None:
    sandbox.write_file(path="notes.txt", content="hi")
    try:  # a name left by an archive made with Latin-1 names
        (sandbox.root / os.fsdecode(b"caf\xe9.txt")).write_text("menu")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes UTF-8 names only")
    assert sandbox.list_files() == ["caf\ufffd.txt", "notes.txt"]

    @app.workflow()
    async def listing(ctx: Context) -> Any:
        return (await ctx.tool(sandbox.list_files, {})).value

    run = app.run(listing)
    assert (run.status, run.output) == ("completed", ["caf\ufffd.txt", "notes.txt"])  # storable, unlike "\udce9"


def test_file_tool_schemas_describe_their_arguments_and_validate_rejects_bad_ones(sandbox: FileSandbox) -> None:
    assert [t.name for t in sandbox.tools] == ["read_file", "write_file", "list_files"]
    write = sandbox.write_file.schema()["function"]["parameters"]
    assert (set(write["properties"]), write["required"]) == ({"path", "content"}, ["path", "content"])
    assert sandbox.list_files.parameters["properties"]["folder"]["default"] == "."
    assert "100 bytes" in sandbox.read_file.description
    for bad in ({"path": "a.txt"}, {"path": "a.txt", "content": 5}, {"path": "a", "content": "", "mode": "a"}):
        with pytest.raises(ToolArgumentsError):
            sandbox.write_file.validate(bad)
    # Writing the same content twice leaves the same file: safe to run again on a retry or a resume.
    assert sandbox.write_file.idempotent is True


def test_a_sandbox_needs_an_existing_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not an existing folder"):
        FileSandbox(tmp_path / "missing")


def test_refusals_are_non_retryable_errors() -> None:
    assert issubclass(CalculatorError, NonRetryableError)
    assert issubclass(FileSandboxError, NonRetryableError)
    assert issubclass(HttpGetRefused, NonRetryableError)
    assert not issubclass(HttpGetError, NonRetryableError)


# -- in a workflow ------------------------------------------------------------------------------------


def test_tools_run_as_recorded_steps_and_only_retryable_failures_are_retried(app: AgentFlow, tmp_path: Path) -> None:
    calls: list[str] = []

    def site(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/slow":
            raise httpx.ReadTimeout("read timed out", request=request)
        if request.url.path == "/image":
            return httpx.Response(200, headers={"content-type": "image/png"}, content=b"\x89PNG")
        return httpx.Response(200, headers={"content-type": "text/plain"}, text="page")

    get = make_http_get(transport=httpx.MockTransport(site))
    (tmp_path / "work").mkdir()
    files = FileSandbox(tmp_path / "work")
    retry = RetryPolicy(max_attempts=3, delay=0)

    @app.workflow()
    async def agent(ctx: Context) -> list[Any]:
        results = [
            await ctx.tool(calculator, expression="2*21"),
            await ctx.tool(calculator, expression="1/0", retry=retry),
            await ctx.tool(get, url="https://example.com/page", retry=retry),
            await ctx.tool(get, url="https://example.com/slow", retry=retry),
            await ctx.tool(get, url="https://example.com/image", retry=retry),
            await ctx.tool(files.write_file, path="../escape.txt", content="x", retry=retry),
        ]
        return [[r.ok, r.value if r.ok else r.error] for r in results]

    run = app.run(agent)
    assert run.status == "completed", run.error
    out = run.output
    assert out[0] == [True, 42]
    assert out[1][0] is False and "divides by zero" in out[1][1]
    assert out[2][0] is True and HttpGetResult.model_validate(out[2][1]).text == "page"
    assert out[3][0] is False and "timed out" in out[3][1]
    assert out[4][0] is False and "not text" in out[4][1]
    assert out[5][0] is False and "goes up with '..'" in out[5][1]
    assert calls == ["/page", "/slow", "/slow", "/slow", "/image"]
    assert not (tmp_path / "escape.txt").exists()


# -- http_get: compressed bodies and unparsable redirects ----------------------------------------------


class StreamedBody:
    """An async body of ``chunks``, read raw by http_get (httpx does not decode an async body up front)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += 1
            yield chunk


def compressed(data: bytes, wbits: int, *, times: int = 1) -> bytes:
    """``data`` repeated ``times`` and compressed: gzip (16 + MAX_WBITS), zlib (MAX_WBITS) or raw deflate
    (-MAX_WBITS), without ever holding the inflated whole."""
    packer = zlib.compressobj(wbits=wbits)
    return b"".join(packer.compress(data) for _ in range(times)) + packer.flush()


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def encoded(encoding: str, chunks: list[bytes]) -> tuple[httpx.MockTransport, list[httpx.Request], StreamedBody]:
    body = StreamedBody(chunks)
    headers = {"content-type": "text/plain; charset=utf-8", "content-encoding": encoding}
    transport, seen = recording(lambda r: httpx.Response(200, headers=headers, content=body))
    return transport, seen, body


def test_http_get_inflates_a_gzip_bomb_only_up_to_max_bytes() -> None:
    bomb = compressed(bytes(1 << 20), 16 + zlib.MAX_WBITS, times=100)  # 100 MB of zeros in about 100 kB
    transport, _, body = encoded("gzip", split(bomb, 64 * 1024))
    get = make_http_get(max_bytes=1_000_000, transport=transport)
    tracemalloc.start()
    try:
        result = fetch(get, url="https://example.com/bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(result.text), result.truncated) == (1_000_000, True)
    assert set(result.text) == {"\0"}
    assert peak < 20_000_000, f"{peak / 1e6:.0f} MB held to read a 1 MB cut"  # a 64 kB chunk inflates to 64 MB
    assert body.pulled < len(body.chunks)  # the rest of the body is not read


@pytest.mark.parametrize(
    ("encoding", "refusal"),
    [
        ("gzip, gzip", r"encoded 2 times over \(gzip, gzip\)"),
        ("deflate, gzip", r"encoded 2 times over"),
        ("br", r"encoded as 'br'; http_get decodes gzip and deflate only"),
        ("zstd", r"encoded as 'zstd'"),
    ],
)
def test_http_get_refuses_a_body_encoded_in_layers_or_in_a_format_it_did_not_ask_for(
    encoding: str, refusal: str
) -> None:
    inner = compressed(b"x" * 1000, 16 + zlib.MAX_WBITS)
    transport, _, _ = encoded(encoding, [compressed(inner, 16 + zlib.MAX_WBITS)])
    with pytest.raises(HttpGetRefused, match=refusal):
        fetch(make_http_get(transport=transport), url="https://example.com/")


@pytest.mark.parametrize(
    ("encoding", "wbits"),
    [
        ("gzip", 16 + zlib.MAX_WBITS),
        ("x-gzip", 16 + zlib.MAX_WBITS),
        ("deflate", zlib.MAX_WBITS),
        ("deflate", -zlib.MAX_WBITS),
    ],
    ids=["gzip", "x-gzip", "zlib-deflate", "raw-deflate"],
)
@pytest.mark.parametrize("chunk_size", [2, 7, 100_000])
def test_http_get_asks_for_gzip_and_deflate_and_decodes_them_streamed_in_any_chunks(
    encoding: str, wbits: int, chunk_size: int
) -> None:
    text = "".join(f"line {i}: héllo\n" for i in range(2000))
    transport, seen, _ = encoded(encoding, split(compressed(text.encode(), wbits), chunk_size))
    get = make_http_get(transport=transport)
    result = fetch(get, url="https://example.com/", headers={"Accept-Encoding": "br, zstd"})
    assert (result.text, result.truncated) == (text, False)
    assert [r.headers["accept-encoding"] for r in seen] == ["gzip, deflate"]  # what it can inflate under its cap

    transport, _, _ = encoded(encoding, split(compressed(text.encode(), wbits), chunk_size))
    cut = fetch(make_http_get(max_bytes=1000, transport=transport), url="https://example.com/")
    assert (cut.text, cut.truncated) == (text.encode()[:1000].decode(errors="ignore"), True)  # 1000 bytes


def test_http_get_decodes_raw_deflate_whose_first_chunk_is_one_byte() -> None:
    text = "hello world " * 500
    transport, _, _ = encoded("deflate", split(compressed(text.encode(), -zlib.MAX_WBITS), 1))
    assert fetch(make_http_get(transport=transport), url="https://example.com/").text == text


def test_http_get_a_damaged_compressed_body_is_an_error_naming_it() -> None:
    damaged = compressed(b"x" * 10_000, 16 + zlib.MAX_WBITS)[:20] + b"not deflate at all"
    transport, _, _ = encoded("gzip", [damaged])
    with pytest.raises(HttpGetError, match="does not decompress"):
        fetch(make_http_get(transport=transport), url="https://example.com/")


@pytest.mark.parametrize("location", ["javascript:alert(1)", "http://[::1"])
def test_http_get_refuses_a_redirect_to_an_unparsable_url_after_one_request_not_retried(
    app: AgentFlow, location: str
) -> None:
    transport, seen = recording(lambda r: httpx.Response(302, headers={"location": location}))
    get = make_http_get(transport=transport)
    with pytest.raises(HttpGetRefused, match="redirected to a URL that cannot be requested"):
        fetch(get, url="https://example.com/start")
    assert len(seen) == 1

    @app.workflow()
    async def browse(ctx: Context) -> list[Any]:
        result = await ctx.tool(get, url="https://example.com/start", retry=RetryPolicy(max_attempts=3, delay=0))
        return [result.ok, result.error]

    seen.clear()
    run = app.run(browse)
    assert run.status == "completed", run.error
    assert run.output[0] is False and run.output[1].startswith("HttpGetRefused: GET https://example.com/start")
    assert len(seen) == 1  # a refusal is not retried
