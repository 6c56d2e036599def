"""environ per PEP 3333 and SPEC.md, filled from the server's parsed request (nginx and Apache)."""
import base64
import hashlib
import http.client
import json
import pathlib
import socket
import subprocess

import pytest
import requests

from conftest import APACHE_H2, APPS, FORWARDED_SCHEME, location, nginx_version, route, tls

APP = APPS / "environ_app.py"


@pytest.fixture(scope="module")
def server(wsgi_factory):
    return wsgi_factory(
        [route("/", APP), route("/mount/", APP), route("= /exact", APP), route("~ ^/re/", APP)]
    ).start()


def environ(server, path="/", method="GET", headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in (headers or [("Host", "client.example:1234")]):
        conn.putheader(name, value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return json.loads(resp.read())


def test_cgi_keys_and_wsgi_keys(server):
    e = environ(server, "/some/path?a=1&b=%20x")
    assert e["REQUEST_METHOD"] == "GET"
    assert e["SCRIPT_NAME"] == ""
    assert e["PATH_INFO"] == "/some/path"
    assert e["QUERY_STRING"] == "a=1&b=%20x"
    assert e["REQUEST_URI"] == "/some/path?a=1&b=%20x"
    assert e["SERVER_NAME"] == "test.local"
    assert e["SERVER_PORT"] == str(server.port)
    assert e["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert e["REMOTE_ADDR"] == "127.0.0.1"
    assert int(e["REMOTE_PORT"]) > 0
    assert e["wsgi.version"] == [1, 0]
    assert e["wsgi.url_scheme"] == "http"
    assert e["wsgi.multithread"] is True
    assert e["wsgi.multiprocess"] is True
    assert e["wsgi.run_once"] is False
    assert e["wsgi.input_terminated"] is True
    assert e["errors_writable"] and e["file_wrapper_callable"]
    assert "CONTENT_TYPE" not in e and "CONTENT_LENGTH" not in e
    for key, typ in e["types"].items():
        if key.isupper():
            assert typ == "str", key


def test_server_identity_never_comes_from_client_headers(server):
    e = environ(server, "/", headers=[("Host", "evil.example:9999"), ("X-Forwarded-Proto", "https")])
    assert e["SERVER_NAME"] == "test.local"
    assert e["SERVER_PORT"] == str(server.port)
    assert e["wsgi.url_scheme"] == "http" and "HTTPS" not in e
    assert e["HTTP_HOST"] == "evil.example:9999"


def test_an_absolute_form_target_names_the_host(server):
    # RFC 9112 3.2.2: the origin server uses the target's authority, not the Host header, by
    # which the server was chosen too (a Host filter must not be bypassed through the target).
    e = environ(server, "http://good.example:8080/some/path?a=1", headers=[("Host", "evil.example")])
    assert e["HTTP_HOST"] == "good.example:8080"
    assert (e["PATH_INFO"], e["QUERY_STRING"]) == ("/some/path", "a=1")
    e = environ(server, "http://good.example/x", headers=[("Host", "evil.example:1")])
    assert e["HTTP_HOST"] == "good.example"


def test_server_name_falls_back_to_the_local_address(nginx_factory):
    srv = nginx_factory(location("/", APP), server_name='""').start()
    e = environ(srv)
    assert e["SERVER_NAME"] == "127.0.0.1" and e["SERVER_PORT"] == str(srv.port)


def test_mounted_location_splits_script_name_and_path_info(server):
    assert (environ(server, "/mount/")["SCRIPT_NAME"], environ(server, "/mount/")["PATH_INFO"]) == ("/mount", "/")
    e = environ(server, "/mount/deeper/x%2Fy?q")
    assert (e["SCRIPT_NAME"], e["PATH_INFO"], e["QUERY_STRING"]) == ("/mount", "/deeper/x/y", "q")
    e = environ(server, "/mountain")
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == ("", "/mountain")


def test_the_mount_without_its_slash_is_redirected_to_it(server):
    # nginx, as for proxy_pass: `/mount` is answered 301 to `/mount/` (the query kept), not
    # served by the app of `/` nor a 404. Apache matches <Location /mount/> only below it.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/mount?q=1")
    resp = conn.getresponse()
    body = resp.read()
    if server.kind == "nginx":
        assert resp.status == 301, body
        assert resp.getheader("Location") == f"http://127.0.0.1:{server.port}/mount/?q=1"
    else:
        assert resp.status == 200 and json.loads(body)["PATH_INFO"] == "/mount"


def test_exact_and_regex_locations_mount_at_root(server):
    e = environ(server, "/exact")
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == ("", "/exact")
    e = environ(server, "/re/x")
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == ("", "/re/x")


def test_a_comma_inside_one_cookie_header_is_kept(server):
    # Not RFC 6265's, but browsers send what servers set (a list, a date): only a join of
    # several Cookie headers becomes "; " (Apache has joined them with ", " before modules see
    # them), never a comma inside a value.
    e = environ(server, "/", headers=[("Host", "h"), ("Cookie", "sessionid=abc; last_search=shoes, red; tz=UTC")])
    assert e["HTTP_COOKIE"] == "sessionid=abc; last_search=shoes, red; tz=UTC"


def test_path_is_percent_decoded_into_latin1_native_string(server):
    e = environ(server, "/caf%C3%A9/%E9")
    assert e["PATH_INFO"] == "/caf\u00c3\u00a9/\u00e9"
    assert e["PATH_INFO"].encode("latin-1") == b"/caf\xc3\xa9/\xe9"
    assert e["REQUEST_URI"] == "/caf%C3%A9/%E9"


def test_headers_mapped_joined_and_underscores_dropped(server):
    e = environ(server, "/", headers=[
        ("Host", "h"), ("X-Multi", "one"), ("x-multi", "two"), ("Cookie", "a=1"), ("Cookie", "b=2"),
        ("X_Sneaky", "underscored"), ("Accept-Language", "fr"), ("Content-Type", "text/plain"),
    ], body=b"12345")
    assert e["HTTP_X_MULTI"] == "one, two"
    assert e["HTTP_COOKIE"] == "a=1; b=2"
    assert e["HTTP_ACCEPT_LANGUAGE"] == "fr"
    assert "HTTP_X_SNEAKY" not in e and not any("SNEAKY" in k for k in e)
    assert e["CONTENT_TYPE"] == "text/plain"
    assert e["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in e and "HTTP_CONTENT_LENGTH" not in e
    assert e["body"] == "12345"


def test_latin1_header_value_is_a_native_string(server):
    e = environ(server, "/", headers=[("Host", "h"), ("X-Latin", "caf\u00e9".encode("latin-1").decode("latin-1"))])
    assert e["HTTP_X_LATIN"] == "caf\u00e9"


def test_http10_request(server):
    e = environ(server, "/old")
    assert e["SERVER_PROTOCOL"] == "HTTP/1.1"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    conn.request("GET", "/old")
    assert json.loads(conn.getresponse().read())["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_chunked_request_gets_content_length_and_no_transfer_encoding(server):
    def chunks():
        yield b"abc"
        yield b"defg"
    r = requests.post(server.url("/"), data=chunks(), headers={"Content-Type": "text/plain"})
    e = r.json()
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert e["CONTENT_LENGTH"] == "7"
    assert "HTTP_TRANSFER_ENCODING" not in e
    assert e["body"] == "abcdefg"


@pytest.fixture(scope="module")
def params_server(nginx_factory):
    return nginx_factory(
        location("/own/", APP, "wsgi_param APP_ENV production; wsgi_param REQUEST_ID $request_id; "
                 "wsgi_param FROM_ARG $arg_x if_not_empty; wsgi_param KEEP_EMPTY $arg_none; "
                 "wsgi_param SCRIPT_NAME /public;")
        + location("/inherited/", APP),
        server_extra="wsgi_param LEVEL server;",
    ).start()


def test_wsgi_param_with_variables_and_inheritance(params_server):
    e = environ(params_server, "/own/x?x=42")
    assert e["APP_ENV"] == "production"
    assert len(e["REQUEST_ID"]) == 32 and int(e["REQUEST_ID"], 16) >= 0
    assert e["FROM_ARG"] == "42"
    assert e["KEEP_EMPTY"] == ""
    assert e["SCRIPT_NAME"] == "/public", "a param may override a CGI key"
    assert "LEVEL" not in e, "a level with its own wsgi_param inherits none, like fastcgi_param"
    assert "FROM_ARG" not in environ(params_server, "/own/x")
    e = environ(params_server, "/inherited/y")
    assert e["LEVEL"] == "server" and "APP_ENV" not in e


def test_remote_user_is_the_user_auth_basic_checked_where_the_readme_gives_it(nginx_factory, tmp_path):
    digest = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    (tmp_path / "users").write_text(f"admin:{{SHA}}{digest}\n")
    server = nginx_factory(
        location("/private/", APP, f'auth_basic "p"; auth_basic_user_file {tmp_path}/users; '
                 "wsgi_param REMOTE_USER $remote_user;")
        + location("/open/", APP)).start()
    assert requests.get(server.url("/private/x"), auth=("admin", "wrong")).status_code == 401
    assert requests.get(server.url("/private/x"), auth=("admin", "s3cret")).json()["REMOTE_USER"] == "admin"
    # The module sets none itself: elsewhere the name would be whatever the client wrote.
    assert "REMOTE_USER" not in requests.get(server.url("/open/x"), auth=("admin", "wrong")).json()


@pytest.fixture(scope="module")
def scheme_server(nginx_factory):
    return nginx_factory(
        location("/fwd/", APP) + location("/fixed/", APP, "wsgi_scheme https;")
        + location("/arg/", APP, "wsgi_scheme $arg_s;")
        + location("/untrusted/", APP, "wsgi_scheme $untrusted_scheme;"),
        # The same for a balancer at 10.1.2.3: this test's client is not it.
        http_extra=FORWARDED_SCHEME + FORWARDED_SCHEME.replace("127.0.0.1", "10.1.2.3")
        .replace("from_balancer", "from_other").replace("app_scheme", "untrusted_scheme"),
        server_extra="wsgi_scheme $app_scheme;",
    ).start()


@pytest.mark.parametrize("path,headers,scheme", [
    ("/fwd/", {}, "http"),
    ("/fwd/", {"X-Forwarded-Proto": "https"}, "https"),
    ("/fwd/", {"X-Forwarded-Proto": "HTTPS"}, "https"),
    ("/fwd/", {"X-Forwarded-Proto": "http"}, "http"),
    ("/fwd/", {"X-Forwarded-Proto": "gopher"}, "http"),
    ("/fixed/", {}, "https"),
    ("/arg/?s=https", {}, "https"),
    ("/arg/?s=HTTP", {}, "http"),
    ("/arg/?s=on", {}, "http"),          # neither http nor https: the connection's
    ("/arg/", {}, "http"),               # empty: the connection's
    ("/untrusted/", {"X-Forwarded-Proto": "https"}, "http"),
])
def test_wsgi_scheme_sets_url_scheme_from_configuration(scheme_server, path, headers, scheme):
    e = environ(scheme_server, path, headers=[("Host", "example.org"), *headers.items()])
    assert e["wsgi.url_scheme"] == scheme
    assert e.get("HTTP_X_FORWARDED_PROTO") == headers.get("X-Forwarded-Proto")


def test_wsgi_scheme_from_the_http_level_and_over_tls(nginx_factory, tmp_path):
    nginx = tls(tmp_path)["nginx"]
    server = nginx_factory(location("/", APP) + location("/told-http/", APP, "wsgi_scheme http;"),
                           http_extra="wsgi_scheme $arg_s;", **nginx).start()
    url = f"https://127.0.0.1:{server.port}"
    assert curl_json("-k", f"{url}/")["wsgi.url_scheme"] == "https", "TLS, nothing said"
    assert curl_json("-k", f"{url}/?s=http")["wsgi.url_scheme"] == "http", "inherited from http {}"
    assert curl_json("-k", f"{url}/told-http/?s=https")["wsgi.url_scheme"] == "http"


def test_wsgi_scheme_errors_fail_the_check(nginx_factory):
    result = nginx_factory(location("/", APP, "wsgi_scheme https; wsgi_scheme http;")).run("-t")
    assert result.returncode != 0 and '"wsgi_scheme" directive is duplicate' in result.stderr
    for value in ('""', "htps", "on"):
        result = nginx_factory(location("/", APP, f"wsgi_scheme {value};")).run("-t")
        assert result.returncode != 0, value
        assert f'invalid value "{value.strip(chr(34))}" in "wsgi_scheme" directive' in result.stderr
    result = nginx_factory(location("/", APP, "wsgi_scheme $no_such_variable;")).run("-t")
    assert result.returncode != 0 and 'unknown "no_such_variable" variable' in result.stderr


def test_wsgi_param_bad_flag(nginx_factory):
    server = nginx_factory(location("/", APP, "wsgi_param A b if_empty;"))
    result = server.run("-t")
    assert result.returncode != 0 and 'wsgi_param: invalid parameter "if_empty"' in result.stderr


@pytest.fixture(scope="module")
def tls_server(wsgi_factory, tmp_path_factory):
    return wsgi_factory([route("/", APP)], **tls(tmp_path_factory.mktemp("tls"))).start()


@pytest.fixture(scope="module")
def h2c_server(wsgi_factory):
    return wsgi_factory([route("/", APP)], nginx=dict(server_extra="http2 on;"),
                        apache=dict(server_extra=APACHE_H2)).start()


def curl_json(*args):
    out = subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, text=True, timeout=20, check=True)
    return json.loads(out.stdout)


def test_tls_sets_https_scheme(tls_server):
    e = curl_json("-k", "--http1.1", f"https://127.0.0.1:{tls_server.port}/s")
    assert (e["wsgi.url_scheme"], e["HTTPS"]) == ("https", "on"), "HTTPS as uwsgi_params passes it"
    assert e["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_http2_over_tls_with_body_without_length(tls_server):
    e = curl_json("-k", "--http2", f"https://127.0.0.1:{tls_server.port}/h2", "-H", "Cookie: a=1",
                  "-H", "Cookie: b=2", "--data-binary", "@-", "-H", "Content-Length:")
    assert e["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert e["wsgi.url_scheme"] == "https"
    assert e["HTTP_COOKIE"] == "a=1; b=2"
    assert e["CONTENT_LENGTH"] == "0" or "CONTENT_LENGTH" not in e


def test_http2_cleartext(h2c_server):
    e = curl_json("--http2-prior-knowledge", f"http://127.0.0.1:{h2c_server.port}/h2c?x=1")
    assert e["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert e["QUERY_STRING"] == "x=1"
    assert e["wsgi.url_scheme"] == "http"


def test_http2_body_without_content_length_is_given_one(h2c_server):
    proc = subprocess.run(
        ["curl", "-sS", "--fail", "--http2-prior-knowledge", "-H", "Transfer-Encoding: chunked",
         "--data-binary", "@-", h2c_server.url("/")],
        input=b"streamed body", capture_output=True, timeout=20, check=True)
    e = json.loads(proc.stdout)
    assert e["body"] == "streamed body"
    assert e["CONTENT_LENGTH"] == "13"
    assert "HTTP_TRANSFER_ENCODING" not in e


def h2_get(port, path, headers, authority=b"t", authority_first=False):
    """One HTTP/2 request (cleartext, prior knowledge) with these extra header pairs: (status, body).
    `authority_first` orders the pseudo-headers as browsers do (`:authority` before `:path`)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        conn.initiate_connection()
        pseudo = [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
                  (b":authority", authority)]
        if authority_first:
            pseudo = [pseudo[0], pseudo[3], pseudo[2], pseudo[1]]
        conn.send_headers(1, pseudo + headers, end_stream=True)
        s.sendall(conn.data_to_send())
        status, body = None, b""
        while True:
            data = s.recv(65536)
            assert data, "the connection closed before the response ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    return status, body
            s.sendall(conn.data_to_send())


@pytest.mark.parametrize("authority_first", [False, True])
def test_http2_host_is_the_authority_whatever_the_order_of_the_pseudo_headers(h2c_server, authority_first):
    # Browsers send :authority before :path. The Host nginx makes of it was read on up to the
    # path's string, elsewhere in memory: the value the app got carried stray bytes, and with a
    # long path other requests' headers (hundreds of KB).
    for path in ["/", "/x?" + "q" * 3000]:
        status, body = h2_get(h2c_server.port, path, [(b"cookie", b"secret=1")],
                              authority=b"example.test:8443", authority_first=authority_first)
        assert status == 200, body[:500]
        e = json.loads(body)
        assert e["HTTP_HOST"] == "example.test:8443", e["HTTP_HOST"][:200]


def test_thousands_of_repeats_of_a_header_cost_memory_in_proportion(nginx_factory, built):
    # HPACK makes each repeat of an indexed header one byte on the wire: 30,000 of them fit
    # nginx's default header budget. Joined one by one, they took the worker to about 1 GB.
    # Before nginx 1.19.7 (Ubuntu 22.04's 1.18), http2_max_header_size (16k) bounds the sum of
    # the header fields' lengths, and Ubuntu's 1.18 counts a request's header lines
    # (`max_headers`, its fix of CVE-2026-49975): 30,000 would be refused before the module saw them.
    extra = ""
    if nginx_version(built[1]) < (1, 19, 7):
        extra = "http2_max_header_size 64k;"
        if b"max_headers\0" in pathlib.Path(built[1]).read_bytes():
            extra += " max_headers 40000;"
    server = nginx_factory(location("/", APP), server_extra="http2 on;" + extra).start()
    worker = server.worker_pids()[0]

    def peak_kib():
        status = pathlib.Path(f"/proc/{worker}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])

    assert h2_get(server.port, "/warm", [])[0] == 200
    before = peak_kib()
    status, body = h2_get(server.port, "/repeats", [(b"x", b"")] * 30_000 + [(b"x-s", b"v")] * 2)
    assert status == 200, body[:500]
    e = json.loads(body)
    assert e["HTTP_X"] == ", " * 29_999
    assert e["HTTP_X_S"] == "v, v"
    assert peak_kib() - before < 64 * 1024
    assert server.worker_pids() == [worker]
