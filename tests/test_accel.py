"""The app's X-Accel-* headers: a redirect target that could leave its location is refused (a 500
and one error-log line), the headers can be ignored by configuration, none reaches the client,
and nginx acts on X-Accel-Limit-Rate and X-Accel-Charset as its upstream modules do."""

import pytest

from conftest import APACHE_MODULES, APPS, asgi_location, http_get, location, raw_request, route, wait_for
from test_metrics import scrape

RESPONSES = APPS / "responses.py"
SECURITY = APPS / "security.py"

NGINX_PROTECTED = f"location /protected/ {{ internal; alias {APPS}/protected/; }}"
APACHE_PROTECTED = (
    f"LoadModule alias_module {APACHE_MODULES}/mod_alias.so\n"
    f"Alias /protected/ {APPS}/protected/\n"
    f"<Directory {APPS}/protected>\n Require all granted\n</Directory>\n"
    # Only internal redirects (which set REDIRECT_STATUS) reach the protected files.
    "<Location /protected/>\n Require env REDIRECT_STATUS\n</Location>\n")


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route("= /accel", f"{RESPONSES}:accel"),
         route("= /ignored", f"{RESPONSES}:accel", nginx="wsgi_ignore_headers X-Accel-Redirect;",
               apache="NgxWsgiIgnoreHeaders X-Accel-Redirect"),
         route("= /headers", f"{SECURITY}:headers_from_query")],
        nginx=dict(server_extra=NGINX_PROTECTED),
        apache=dict(server_extra=APACHE_PROTECTED),
    ).start()




ESCAPES = [
    "/protected/../responses.py",
    "/protected/../",
    "/protected/..",
    "/protected/..?x=1",
    "/protected/%2e%2e/responses.py",
    "/protected/%2E%2e%2Fresponses.py",
    "/protected/..%2fresponses.py",
    "/protected/hello.txt%00",
    "/protected/hello.txt%0d%0aX-Injected:%201",
    "/protected/100%.txt",
    "protected/hello.txt",
    "",
]


@pytest.mark.parametrize("target", ESCAPES)
def test_a_target_that_could_leave_its_location_is_a_500_and_one_log_line(server, target):
    needle = f'X-Accel-Redirect "{target}" was refused'
    before = server.error_log().count(needle)
    status, headers, body = http_get(server, f"/accel?{target}")
    assert status == 500
    assert b"def accel" not in body and b"replaced by the redirect" not in body
    assert "X-Accel-Redirect" not in headers
    assert server.error_log().count(needle) == before + 1, server.error_log()[-2000:]


@pytest.mark.parametrize("target", ["/protected/hello.txt", "/protected/hello%2etxt",
                                    "/protected/./hello.txt", "/protected/hello.txt?a=../..%00"])
def test_a_safe_target_is_decoded_and_served(server, target):
    status, headers, body = http_get(server, f"/accel?{target}")
    assert (status, body) == (200, b"protected file contents\n")
    assert headers["Content-Disposition"] == "attachment; filename=hello.txt"


def test_an_ignored_x_accel_redirect_leaves_the_apps_response_and_is_not_sent(server):
    status, headers, body = http_get(server, "/ignored?/protected/hello.txt")
    assert (status, body) == (200, b"this body is replaced by the redirect target")
    assert headers["Content-Type"] == "text/html"
    assert "X-Accel-Redirect" not in headers


def test_x_accel_headers_are_for_the_server_never_for_the_client(server):
    status, headers, body = http_get(server, "/headers?X-Accel-Buffering=no&X-Accel-Expires=10"
                                        "&X-Accel-Limit-Rate=100&X-Accel-Charset=utf-8&X-Accel-Other=kept")
    assert (status, body) == (200, b"the app's own body\n")
    assert not [h for h in headers if h.lower().startswith("x-accel-") and h != "X-Accel-Other"]
    assert headers["X-Accel-Other"] == "kept", "only the headers nginx's upstream modules hide"


@pytest.fixture(scope="module")
def nginx_server(nginx_factory):
    # $limit_rate shows what the response is paced at; source_charset makes utf-8 a known charset.
    rate = "add_header X-Limit $limit_rate always; source_charset utf-8;"
    return nginx_factory(
        location("= /headers", f"{SECURITY}:headers_from_query", rate)
        + location("= /ignoring", f"{SECURITY}:headers_from_query",
                   f"{rate} wsgi_ignore_headers X-Accel-Limit-Rate X-Accel-Charset;")
        # A nested location inherits the enclosing one's list.
        + f"  location /outer/ {{ wsgi_ignore_headers X-Accel-Redirect; {rate}\n"
        + location("/outer/inner", f"{SECURITY}:headers_from_query") + "  }\n"
        + f"  location /protected/ {{ internal; alias {APPS}/protected/; {rate} }}\n",
    ).start()


@pytest.mark.parametrize("query, limit", [
    ("X-Accel-Limit-Rate=12345", "12345"),
    ("X-Accel-Limit-Rate=%2012345%20", "12345"),
    ("X-Accel-Limit-Rate=12a", "0"),
    ("X-Accel-Limit-Rate=-5", "0"),
    ("X-Accel-Limit-Rate=100&X-Accel-Limit-Rate=200", "100"),
    ("", "0"),
])
def test_x_accel_limit_rate_paces_the_response(nginx_server, query, limit):
    status, headers, body = http_get(nginx_server, f"/headers?{query}")
    assert (status, body) == (200, b"the app's own body\n")
    assert headers["X-Limit"] == limit
    assert "X-Accel-Limit-Rate" not in headers


def test_x_accel_limit_rate_applies_to_the_redirect_target(nginx_server):
    redirect = "X-Accel-Redirect=/protected/hello.txt&X-Accel-Limit-Rate=54321"
    status, headers, body = http_get(nginx_server, f"/headers?{redirect}")
    assert (status, body) == (200, b"protected file contents\n")
    assert headers["X-Limit"] == "54321"
    status, headers, body = http_get(nginx_server, f"/ignoring?{redirect}")
    assert (status, body) == (200, b"protected file contents\n")
    assert headers["X-Limit"] == "0"
    status, headers, body = http_get(nginx_server, f"/outer/inner?{redirect}")
    assert (status, body) == (200, b"the app's own body\n")
    assert headers["X-Limit"] == "54321"


def test_a_redirect_keeps_the_headers_nginxs_upstream_modules_keep(nginx_server):
    # As behind proxy_pass: the app's cookies, disposition and caching go with the target (its
    # type too: the ASGI test below); its other headers (a CORS middleware's, which a target served by the app again would add
    # a second time; Vary, Link, its own) do not.
    kept = "Cache-Control=private&Expires=0&Set-Cookie=a%3D1"
    dropped = "X-Own=1&Access-Control-Allow-Origin=*&Vary=Origin&Link=%3C/a%3E"
    status, headers, body = http_get(nginx_server, f"/headers?X-Accel-Redirect=/protected/hello.txt&{kept}&{dropped}")
    assert (status, body) == (200, b"protected file contents\n")
    assert (headers["Cache-Control"], headers["Expires"], headers["Set-Cookie"]) == ("private", "0", "a=1")
    assert not {"X-Own", "Access-Control-Allow-Origin", "Vary", "Link"} & set(headers), headers


def test_x_accel_charset_sets_the_responses_charset(nginx_server):
    _, headers, _ = http_get(nginx_server, "/headers?X-Accel-Charset=utf-8")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "X-Accel-Charset" not in headers
    _, headers, _ = http_get(nginx_server, "/headers")
    assert headers["Content-Type"] == "text/plain"
    _, headers, _ = http_get(nginx_server, "/ignoring?X-Accel-Charset=utf-8")
    assert headers["Content-Type"] == "text/plain"
    assert "X-Accel-Charset" not in headers


def test_ignoring_a_header_the_module_does_not_act_on_fails_the_configuration(wsgi_factory):
    server = wsgi_factory([route("/", APPS / "sleepy.py",
                                 nginx="wsgi_ignore_headers X-Accel-Redirect X-Accel-Buffering;",
                                 apache="NgxWsgiIgnoreHeaders X-Accel-Redirect X-Accel-Charset")])
    result = server.run("-t")
    assert result.returncode != 0
    if server.kind == "nginx":
        assert ('wsgi_ignore_headers: unknown header "X-Accel-Buffering" (this module acts on '
                'X-Accel-Redirect, X-Accel-Limit-Rate, X-Accel-Charset)') in result.stderr, result.stderr
        assert f"in {server.conf}:" in result.stderr
    else:
        assert ('NgxWsgiIgnoreHeaders: unknown header "X-Accel-Charset" (on Apache this module acts on '
                'X-Accel-Redirect only)') in result.stderr, result.stderr


def test_wsgi_ignore_headers_twice_is_a_duplicate(nginx_factory):
    server = nginx_factory(location("/", APPS / "sleepy.py", "wsgi_ignore_headers X-Accel-Redirect; "
                                                              "wsgi_ignore_headers X-Accel-Charset;"))
    assert '"wsgi_ignore_headers" directive is duplicate' in server.run("-t").stderr


@pytest.fixture(scope="module")
def asgi_server(nginx_factory):
    app = f"{SECURITY}:asgi_headers_from_query"
    accel = f"{SECURITY}:asgi_accel"
    return nginx_factory(
        asgi_location("/asgi/", app, "add_header X-Limit $limit_rate always;")
        + asgi_location("/asgi-ignoring/", app, "wsgi_ignore_headers X-Accel-Redirect X-Accel-Limit-Rate; "
                                                "add_header X-Limit $limit_rate always;")
        + asgi_location("= /asgi-accel", accel)
        + asgi_location("= /asgi-accel-ignored", accel, "wsgi_ignore_headers X-Accel-Redirect;")
        + "  location @named { return 200 \"named location, $request_method\\n\"; }\n"
        + f"  {NGINX_PROTECTED}\n"
        + "  location = /metrics { wsgi_status; }\n",
    ).start()


def test_an_asgi_apps_x_accel_headers(asgi_server):
    status, headers, body = http_get(asgi_server, "/asgi/x?X-Accel-Redirect=/protected/hello.txt")
    assert (status, body) == (200, b"protected file contents\n")
    assert "X-Accel-Redirect" not in headers
    status, headers, body = http_get(asgi_server, "/asgi-ignoring/x?X-Accel-Redirect=/protected/hello.txt")
    assert (status, body) == (200, b"the app's own body\n")
    assert "X-Accel-Redirect" not in headers
    status, headers, body = http_get(asgi_server, "/asgi/x?X-Accel-Limit-Rate=777")
    assert (status, body, headers["X-Limit"]) == (200, b"the app's own body\n", "777")
    assert "X-Accel-Limit-Rate" not in headers
    status, headers, body = http_get(asgi_server, "/asgi-ignoring/x?X-Accel-Limit-Rate=777")
    assert (status, body, headers["X-Limit"]) == (200, b"the app's own body\n", "0")
    assert not [h for h in headers if h.lower().startswith("x-accel-")]


@pytest.mark.parametrize("target", ["/protected/hello.txt", "/protected/hello%2etxt", "/protected/./hello.txt"])
def test_an_asgi_apps_redirect_is_served_from_its_target_and_its_body_dropped(asgi_server, target):
    status, headers, body = http_get(asgi_server, f"/asgi-accel?{target}")
    assert (status, body) == (200, b"protected file contents\n")
    assert headers["Content-Disposition"] == "attachment; filename=hello.txt"
    assert headers["Set-Cookie"] == "seen=1"
    assert headers["Content-Type"] == "text/html", "the app's type, as nginx's upstream modules keep it"


def test_an_asgi_apps_redirect_is_counted_with_the_apps_status(asgi_server):
    def twos():
        return scrape(asgi_server).get('wsgi_responses_total{class="2xx"}', 0)

    before = twos()
    assert http_get(asgi_server, "/asgi-accel?/protected/hello.txt")[0] == 200
    # Counted when nginx ends the request (here before the redirect answers); the scrape itself
    # is answered by nginx and not counted.
    wait_for(lambda: twos() >= before + 1, what="the redirect counted")
    assert twos() == before + 1


def test_an_asgi_apps_redirect_to_a_named_location_and_on_head(asgi_server):
    status, _, body = http_get(asgi_server, "/asgi-accel?@named")
    assert (status, body) == (200, b"named location, GET\n")
    data = raw_request(asgi_server.port, b"HEAD /asgi-accel?/protected/hello.txt HTTP/1.1\r\nHost: t\r\n"
                                         b"Connection: close\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 24" in head, head
    assert rest == b""


@pytest.mark.parametrize("target", ["/protected/../test_accel.py", "/protected/%2e%2e/x", "/protected/a%00", ""])
def test_an_asgi_apps_redirect_that_could_leave_its_location_is_a_500(asgi_server, target):
    needle = f'X-Accel-Redirect "{target}" was refused'
    before = asgi_server.error_log().count(needle)
    status, headers, body = http_get(asgi_server, f"/asgi-accel?{target}")
    assert status == 500
    assert b"replaced" not in body and "X-Accel-Redirect" not in headers
    assert asgi_server.error_log().count(needle) == before + 1, asgi_server.error_log()[-2000:]


def test_an_asgi_app_is_redirected_at_its_first_body_message_and_one_that_sends_none_is_a_500(asgi_server):
    # As nginx acts on a proxied app's X-Accel-Redirect once its head is in (the body that follows
    # is dropped, and what the app does then does not change the answer); the module's head
    # waits for the first body message, and an app that returns before any is a 500.
    for mode in ("fail", "early"):
        status, _, body = http_get(asgi_server, f"/asgi-accel?{mode}&/protected/hello.txt")
        assert (status, body) == (200, b"protected file contents\n")
    wait_for(lambda: "RuntimeError: failed after the redirect head" in asgi_server.error_log(),
             what="the app's error after the redirect, logged")
    logged = "returned before its response was complete"
    before = asgi_server.error_log().count(logged)
    status, _, body = http_get(asgi_server, "/asgi-accel?bare&/protected/hello.txt")
    assert status == 500 and b"protected file" not in body
    assert asgi_server.error_log().count(logged) == before + 1


def test_an_asgi_apps_ignored_redirect_sends_the_apps_body(asgi_server):
    status, headers, body = http_get(asgi_server, "/asgi-accel-ignored?/protected/hello.txt")
    assert (status, body) == (200, b"this body is replaced by the redirect target")
    assert headers["Content-Type"] == "text/html"
    assert "X-Accel-Redirect" not in headers
