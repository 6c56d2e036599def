"""`wsgi_intercept_errors on`: an app's status that has an `error_page` gets that page, as with
`uwsgi_intercept_errors` for a proxied app (the app's body dropped, a 401's challenge kept);
statuses without one, and locations with it off, keep the app's own response."""
import http.client

import pytest
import requests

from conftest import APPS, asgi_location, location, wait_for

APP = APPS / "intercepted.py"


@pytest.fixture(scope="module")
def server(nginx_factory, tmp_path_factory):
    pages = tmp_path_factory.mktemp("error-pages")
    for status in (401, 404):
        (pages / f"{status}.html").write_text(f"the site's {status} page\n")
    pages.chmod(0o755)
    return nginx_factory(
        location("/on/", f"{APP}:application")
        + location("/off/", f"{APP}:application", "wsgi_intercept_errors off;")
        + asgi_location("/asgi/", f"{APP}:asgi")
        + f"  location /errors/ {{ internal; alias {pages}/; }}\n"
        + '  location @fallback { return 503 "the site\'s fallback page\\n"; }\n',
        server_extra="wsgi_intercept_errors on; error_page 401 /errors/401.html; "
                     "error_page 404 /errors/404.html; error_page 500 502 = @fallback;",
    ).start()


@pytest.mark.parametrize("prefix", ["/on/", "/asgi/"])
@pytest.mark.parametrize("query,status,body", [
    ("404", 404, "the site's 404 page\n"),
    ("500", 503, "the site's fallback page\n"),
    ("502", 503, "the site's fallback page\n"),
])
def test_a_status_with_an_error_page_gets_the_page(server, prefix, query, status, body):
    r = requests.get(server.url(f"{prefix}?{query}"), timeout=10)
    assert (r.status_code, r.text) == (status, body)
    assert "X-App" not in r.headers and "Set-Cookie" not in r.headers, r.headers


@pytest.mark.parametrize("prefix", ["/on/", "/asgi/"])
def test_an_intercepted_status_comes_before_an_x_accel_redirect(server, prefix):
    r = requests.get(server.url(f"{prefix}?404&accel"), timeout=10)
    assert (r.status_code, r.text) == (404, "the site's 404 page\n")
    r = requests.get(server.url(f"{prefix}?200&accel"), timeout=10)
    assert (r.status_code, r.text) == (200, "the site's 401 page\n"), "the redirect, for a status without a page"


@pytest.mark.parametrize("prefix", ["/on/", "/asgi/"])
def test_a_401_keeps_the_apps_challenge(server, prefix):
    r = requests.get(server.url(f"{prefix}?401"), timeout=10)
    assert (r.status_code, r.text) == (401, "the site's 401 page\n")
    assert r.headers["WWW-Authenticate"] == 'Basic realm="app"'
    assert "Set-Cookie" not in r.headers


@pytest.mark.parametrize("prefix", ["/on/", "/asgi/"])
@pytest.mark.parametrize("query", ["403", "200", "301"])
def test_a_status_without_an_error_page_is_the_apps_response(server, prefix, query):
    r = requests.get(server.url(f"{prefix}?{query}"), timeout=10, allow_redirects=False)
    assert (r.status_code, r.text) == (int(query), f"the app's own {query} page\n")
    assert r.headers["X-App"] == "yes"


def test_a_location_with_it_off_keeps_the_apps_response(server):
    r = requests.get(server.url("/off/?404"), timeout=10)
    assert (r.status_code, r.text, r.headers["X-App"]) == (404, "the app's own 404 page\n", "yes")


def test_a_streamed_body_is_not_sent_and_an_endless_one_is_stopped(server):
    r = requests.get(server.url("/on/?404&write"), timeout=10)
    assert (r.status_code, r.text) == (404, "the site's 404 page\n")
    r = requests.get(server.url("/on/?500&endless"), timeout=10)
    assert (r.status_code, r.text) == (503, "the site's fallback page\n")
    wait_for(lambda: "intercepted: the endless body was closed" in server.error_log(),
             what="the endless body's close()")
    r = requests.get(server.url("/asgi/?404&endless"), timeout=10)
    assert (r.status_code, r.text) == (404, "the site's 404 page\n")
    wait_for(lambda: "intercepted: the endless body stopped: ClientDisconnected" in server.error_log(),
             what="the ASGI app's endless body stopped")


@pytest.mark.parametrize("prefix", ["/on/", "/asgi/"])
def test_the_connection_goes_on_after_an_intercepted_status(server, prefix):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        # (a 500 closes the connection: nginx ends keep-alive after its own 500 page)
        for query, status in (("404", 404), ("200", 200), ("502", 503), ("401", 401), ("200", 200)):
            conn.request("GET", f"{prefix}?{query}")
            r = conn.getresponse()
            r.read()
            assert r.status == status
            assert not r.will_close
    finally:
        conn.close()


def test_a_bad_value_fails_the_check_naming_the_directive(nginx_factory):
    result = nginx_factory(location("/", f"{APP}:application", "wsgi_intercept_errors maybe;")).run("-t")
    assert result.returncode != 0
    assert 'invalid value "maybe" in "wsgi_intercept_errors" directive' in result.stderr
