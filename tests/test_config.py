"""Configuration: every wsgi_* mistake fails `nginx -t` (and start, and reload) naming the
directive, the file and line, and the Python error."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from conftest import APPS, UNLOADABLE_APPS, location, wait_for
from pythons import venv_of_another_installation, venv_of_other_python

BROKEN = APPS / "broken"


def marks(directory, kind):
    return sorted(int(name.split("-")[1]) for name in os.listdir(directory) if name.startswith(kind + "-"))


def conf_test(nginx_factory, locations, **kwargs):
    server = nginx_factory(locations, **kwargs)
    return server, server.run("-t")


@pytest.mark.parametrize("spec, expected", UNLOADABLE_APPS)
def test_unloadable_app_fails_config_test(nginx_factory, spec, expected):
    server, result = conf_test(nginx_factory, location("/", spec))
    assert result.returncode != 0
    assert "test failed" in result.stderr
    assert f'[emerg] wsgi_app "{spec}" (in {server.conf}:' in result.stderr
    assert "cannot be loaded" in result.stderr
    assert expected in result.stderr, result.stderr


def test_a_package_the_app_files_directory_hides_is_named_with_the_way_out(nginx_factory, tmp_path):
    # A Django project's inner directory, put first on sys.path with its wsgi.py, has a package
    # named as one the app's dependencies import (NetBox's netbox/netbox/graphql hides
    # strawberry's graphql): the traceback alone gave no hint.
    project = tmp_path / "site" / "proj"
    (project / "graphlib").mkdir(parents=True)
    (project / "__init__.py").write_text("")
    (project / "graphlib" / "__init__.py").write_text("")
    (project / "wsgi.py").write_text("from graphlib import TopologicalSorter\n"
                                     "def application(environ, start_response):\n"
                                     "    start_response('200 OK', [])\n    return [b'ok']\n")
    _, result = conf_test(nginx_factory, location("/", project / "wsgi.py"))
    assert result.returncode != 0 and "cannot import name 'TopologicalSorter'" in result.stderr, result.stderr
    assert (f"note: {project}, the app file's directory, comes before the installed modules on sys.path and "
            "has its own \"graphlib\", which hides the installed one; name the app as a module instead: "
            f"`proj.wsgi` (with {project.parent} on the Python path") in result.stderr, result.stderr
    _, result = conf_test(nginx_factory, location("/", "proj.wsgi"),
                          http_extra=f"wsgi_python_path {project.parent};")
    assert result.returncode == 0, result.stderr
    # The app's own module, which hides nothing, failing to import is the app's error alone.
    (project / "helpers.py").write_text("")
    (project / "wsgi.py").write_text("from helpers import missing\n")
    _, result = conf_test(nginx_factory, location("/", project / "wsgi.py"))
    assert result.returncode != 0 and "cannot import name 'missing' from 'helpers'" in result.stderr, result.stderr
    assert "note:" not in result.stderr, result.stderr


def test_traceback_reaches_nginx_t_output(nginx_factory):
    _, result = conf_test(nginx_factory, location("/", f"{BROKEN}/raises_at_import.py"))
    assert "Traceback (most recent call last):" in result.stderr
    assert "raises_at_import.py\", line 1, in <module>" in result.stderr


def test_a_traceback_longer_than_a_log_entry_reaches_nginx_t_output_whole(nginx_factory):
    _, result = conf_test(nginx_factory, location("/", f"{BROKEN}/long_traceback.py"))
    assert result.returncode != 0
    assert "nginx: [emerg]" in result.stderr and "long_traceback.py\", line 3, in <module>" in result.stderr
    assert "a long reason, " * 200 + "and the end of it" in result.stderr


@pytest.mark.parametrize("value, expected", [
    ("not a module", "is neither PATH.py[:CALLABLE] nor module.name[:CALLABLE]"),
    ("app.py:1bad", "is not a Python name"),
])
def test_malformed_wsgi_app_value(nginx_factory, value, expected):
    _, result = conf_test(nginx_factory, location("/", f'"{value}"'))
    assert result.returncode != 0 and expected in result.stderr


@pytest.mark.parametrize("directive", ["wsgi_app", "asgi_app", "wsgi_python_home", "wsgi_python_path"])
def test_a_value_that_is_not_utf8_is_refused_naming_its_directive(nginx_factory, directive):
    server = nginx_factory(location("/", APPS / "hello.py"))
    conf = server.prefix / "nginx.conf"
    text = conf.read_bytes()
    line = directive.encode() + b' "/srv/caf\xe9.py";'
    if directive in ("wsgi_app", "asgi_app"):
        text = text.replace(b"location / {", b"location /x/ {" + line + b"}\n  location / {", 1)
    else:
        text = text.replace(b"http {", b"http {" + line, 1)
    conf.write_bytes(text)
    result = server.run("-t")
    assert result.returncode != 0, result.stderr
    assert f'{directive}: "/srv/caf\ufffd.py" is not valid UTF-8' in result.stderr, result.stderr


def test_duplicate_and_misplaced_directives(nginx_factory):
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py", f"wsgi_app {APPS}/sleepy.py;"))
    assert '"wsgi_app" directive is duplicate' in result.stderr
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), http_extra=f"wsgi_app {APPS}/sleepy.py;")
    assert '"wsgi_app" directive is not allowed here' in result.stderr


@pytest.mark.parametrize("value", ["999", "0o22", "u=rwx", "1777"])
def test_a_bad_umask_is_refused(nginx_factory, value):
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), http_extra=f"wsgi_umask {value};")
    assert result.returncode != 0
    assert f'wsgi_umask "{value}": an octal mask from 000 to 0777 (e.g. 022, 027), or off' in result.stderr
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), http_extra="wsgi_umask 022; wsgi_umask 027;")
    assert '"wsgi_umask" directive is duplicate' in result.stderr


@pytest.mark.parametrize("value", ["0", "0k"])
def test_a_stream_buffer_of_nothing_is_refused(nginx_factory, value):
    # With no room, every streamed response, ASGI send() and unbuffered read would wait for ever.
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py", f"wsgi_stream_buffer {value};"))
    assert result.returncode != 0
    assert '"wsgi_stream_buffer" directive must be at least 1 in ' in result.stderr, result.stderr
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py", "wsgi_stream_buffer 1;"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("directive", ["wsgi_queue_timeout", "wsgi_check_timeout"])
def test_a_timeout_of_nothing_is_refused(nginx_factory, directive):
    # Every request that found the threads busy would be refused at once; the check's 0 meant
    # its default, 60 s, where a reader would take it for no limit.
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), http_extra=f"{directive} 0;")
    assert result.returncode != 0
    assert f'"{directive}" directive must be more than 0 in ' in result.stderr, result.stderr
    least = {"wsgi_queue_timeout": "1ms", "wsgi_check_timeout": "30s"}[directive]
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), http_extra=f"{directive} {least};")
    assert result.returncode == 0, result.stderr


def test_python_home_of_another_version_is_refused(nginx_factory, tmp_path):
    (tmp_path / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.99.1\n")
    server, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), home=False,
                               http_extra=f"wsgi_python_home {tmp_path};")
    assert result.returncode != 0
    assert re.search(rf'\[emerg\] wsgi_python_home {tmp_path} is Python 3\.99; '
                     rf'this module embeds Python 3\.\d+ in {server.conf}:\d+', result.stderr), result.stderr


def test_virtualenv_of_another_installed_python_is_refused(nginx_factory, tmp_path):
    version, venv = venv_of_other_python(tmp_path)
    server, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), home=False,
                               http_extra=f"wsgi_python_home {venv};")
    assert result.returncode != 0
    embedded = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (f"[emerg] wsgi_python_home {venv} is Python {version}; this module embeds Python {embedded} "
            f"in {server.conf}:") in result.stderr, result.stderr


def test_virtualenv_of_another_installation_of_the_same_version_is_refused(nginx_factory, tmp_path):
    # `python3 -m venv` with pyenv's 3.11.7 on PATH, for a module that embeds Debian's 3.11.2:
    # the venv brings the other installation's standard library and C extensions, which need
    # symbols the embedded libpython lacks (`import ssl` fails), or load and misbehave.
    python, venv = venv_of_another_installation(tmp_path)
    server, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), home=False,
                               http_extra=f"wsgi_python_home {venv};")
    assert result.returncode != 0
    assert (f"[emerg] wsgi_python_home {venv} is a virtualenv of another Python "
            f"{sys.version_info[0]}.{sys.version_info[1]} installation (the one in {os.path.dirname(python)}, "
            f"whose standard library is ") in result.stderr, result.stderr
    assert re.search(r"make the virtualenv with \S+python\S* -m venv", result.stderr), result.stderr


def test_python_home_that_does_not_exist(nginx_factory, tmp_path):
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"), home=False,
                          http_extra=f"wsgi_python_home {tmp_path}/nope;")
    assert result.returncode != 0 and "is not a directory" in result.stderr


def test_python_path_that_does_not_exist(nginx_factory, tmp_path):
    server, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"),
                               http_extra=f"wsgi_python_path {tmp_path} {tmp_path}/gone;")
    assert f'wsgi_python_path "{tmp_path}/gone" is not a directory in {server.conf}:' in result.stderr


def test_good_config_passes(nginx_factory):
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py"))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_module_name_with_python_path_and_env_pythonpath(nginx_factory, tmp_path):
    (tmp_path / "envapp.py").write_text(
        "def application(e, sr):\n    sr('200 OK', [])\n    return [b'from PYTHONPATH']\n")
    server = nginx_factory(
        location("/a", "environ_app") + location("/b", "envapp:application"),
        http_extra=f"wsgi_python_path {APPS};",
        main_extra=f"env PYTHONPATH={tmp_path};",
    ).start()
    e = requests.get(server.url("/a")).json()
    assert (e["SCRIPT_NAME"], e["PATH_INFO"]) == ("/a", "")
    assert requests.get(server.url("/b")).text == "from PYTHONPATH"


def test_broken_app_prevents_start(nginx_factory):
    server = nginx_factory(location("/", f"{BROKEN}/import_error.py"))
    with pytest.raises(RuntimeError, match="No module named"):
        server.start()
    assert server.proc.returncode != 0


def test_reload_with_broken_app_keeps_old_workers(nginx_factory):
    server = nginx_factory(location("/", APPS / "sleepy.py")).start()
    workers = server.worker_pids()
    server.conf.write_text(server.conf.read_text().replace(str(APPS / "sleepy.py"), str(BROKEN / "syntax_error.py")))
    server.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "SyntaxError" not in server.error_log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "SyntaxError" in server.error_log()
    assert requests.get(server.url("/still")).text == "/still"
    assert server.worker_pids() == workers


def test_log_lines_after_a_slow_check_carry_the_time_they_were_written(nginx_factory):
    # The check imports the apps while nginx reads its configuration, with its clock cached:
    # the lines that followed (the workers' start) were stamped two seconds early.
    started = time.time()
    server = nginx_factory(location("/", APPS / "slow_import.py")).start()
    assert requests.get(server.url("/"), timeout=10).text.startswith("imported")
    line = next(l for l in server.error_log().splitlines() if "start worker process" in l)
    stamp = time.mktime(time.strptime(line[:19], "%Y/%m/%d %H:%M:%S"))
    assert stamp >= int(started) + 2, (line, time.strftime("%H:%M:%S", time.localtime(started)))


def test_an_import_that_blocks_fails_the_check_in_bounded_time_naming_the_app(nginx_factory):
    app = APPS / "blocks_at_import.py"
    server = nginx_factory(location("/", app), http_extra="wsgi_check_timeout 1s;")
    started = time.monotonic()
    result = server.run("-t")
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    assert f'wsgi_app "{app}"' in result.stderr and "cannot be loaded: importing it took longer than 1 s" \
        in result.stderr, result.stderr


def test_processes_an_app_starts_at_import_neither_hold_nor_outlive_the_check(nginx_factory, tmp_path):
    # They inherit the check's report pipe and would hold it open (the check used to wait for
    # them until wsgi_check_timeout, then fail); they are the check's, and end with it, those
    # in a session of their own (out of the check's process group) too.
    server = nginx_factory(location("/", APPS / "forks_at_import.py"),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_check_timeout 30s; wsgi_shutdown_timeout 1s;")
    started = time.monotonic()
    result = server.run("-t")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20, "well before wsgi_check_timeout"
    wait_for(lambda: len(os.listdir(tmp_path)) == 4, timeout=10, what="the four processes' marks")
    started_by_check = [int(name.split("-")[1]) for name in os.listdir(tmp_path)]

    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    wait_for(lambda: not any(map(running, started_by_check)), timeout=10, what="the check's leftovers to end")
    server.start()
    try:
        assert requests.get(server.url("/"), timeout=10).text == "served"
    finally:
        server.stop()
        # The worker's are the app's to keep (as under any server): the test ends them itself.
        for name in os.listdir(tmp_path):
            pid = int(name.split("-")[1])
            if pid not in started_by_check and running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_fork_in_the_checks_atexit_handlers_keeps_its_descriptors(nginx_factory, tmp_path):
    # Forks close the check's report only while it is open: once written, its descriptor may be
    # a file the apps' exit opened, which a child forked then must keep.
    # The exit's bound well past what a fork takes on a loaded machine: one run of the suite under
    # the sanitizer (four test processes on two cores) found the file empty, which an exit bound
    # (5 s by default) passing before the fork wrote would give. What is tested is the
    # descriptor, not the time; the check's output says what happened if it fails.
    server = nginx_factory(location("/", APPS / "forks_at_exit.py"),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_shutdown_timeout 60s;")
    result = server.run("-t")
    assert result.returncode == 0, result.stderr
    [written] = [p.read_text() for p in tmp_path.iterdir()]
    assert written.endswith(": written by the fork"), (written, result.stderr)


def test_the_check_runs_when_nginx_is_pid_1(nginx_factory):
    # As a container's command (`CMD ["nginx", "-g", "daemon off;"]`): the check's parent is
    # process 1, which the check must not take for a parent that died.
    if subprocess.run(["unshare", "-fp", "--mount-proc", "true"], capture_output=True).returncode != 0:
        pytest.skip("no new PID namespace here (unshare needs CAP_SYS_ADMIN)")
    server = nginx_factory(location("/", APPS / "sleepy.py"))
    result = subprocess.run(["unshare", "-fp", "--mount-proc", server.binary, "-p", str(server.prefix),
                             "-c", str(server.conf), "-t"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    broken = nginx_factory(location("/", BROKEN / "syntax_error.py"))
    result = subprocess.run(["unshare", "-fp", "--mount-proc", broken.binary, "-p", str(broken.prefix),
                             "-c", str(broken.conf), "-t"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SyntaxError" in result.stderr, result.stderr


def test_the_checks_process_runs_the_apps_atexit_handlers_as_it_ends(nginx_factory, tmp_path):
    # Its process imported the apps: their atexit handlers clean up after it (prometheus_client's
    # multiprocess files of its pid), as at any Python process's end. One that never returns (it
    # runs last: handlers run in reverse order) is cut by the shutdown timeout and fails nothing.
    server = nginx_factory(location("/waits/", APPS / "waits_at_exit.py")
                           + location("/", APPS / "lifecycle_app.py"),
                           main_extra=f"env NGX_WSGI_TEST_MARKS={tmp_path};",
                           http_extra="wsgi_shutdown_timeout 1s;")
    result = server.run("-t")
    assert result.returncode == 0, result.stderr
    checks = marks(tmp_path, "imported")
    assert len(checks) == 1
    assert marks(tmp_path, "finalized") == checks
    assert re.search(rf"\[error\] wsgi \(configuration check, pid {checks[0]}\): the atexit handlers still "
                     r"running after wsgi_shutdown_timeout \(1000 ms\); the process exits now", result.stderr), \
        result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_the_check_runs_as_the_workers_user_with_its_groups_and_no_server_descriptors(nginx_factory):
    import pathlib
    import tempfile
    probes = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-probes-"))
    probes.chmod(0o777)
    server = nginx_factory(location("/", APPS / "check_probe.py"),
                           main_extra=f"env NGX_WSGI_PROBES={probes};")
    conf = server.conf.read_text().replace("user root root;", "user nobody nogroup;")
    server.conf.write_text(conf)
    assert server.run("-t").returncode == 0
    server.start()
    assert requests.get(server.url("/")).text == "probed"
    server.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(list(probes.iterdir())) < 4:
        time.sleep(0.05)
    import grp
    import json
    import pwd
    nobody, nogroup = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    checks = [json.loads(p.read_text()) for p in probes.iterdir()]
    # Workers import the app too, with their event loop (epoll) already made; check processes
    # have none.
    checks = [c for c in checks if not any("eventpoll" in t for t in c["fds"].values())]
    assert len(checks) >= 3, "nginx -t, start and reload each ran the check"
    for c in checks:
        assert (c["uid"], c["gid"]) == (nobody, nogroup), c
        assert c["groups"] == [nogroup], f"root's groups are not kept: {c['groups']}"
        sockets = [target for target in c["fds"].values() if target.startswith("socket:")]
        assert sockets == [], f"no listening socket or worker channel inherited: {c['fds']}"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_python_home_closed_to_the_workers_user_is_named_as_such(nginx_factory):
    import pathlib
    import sys
    import tempfile
    closed = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-closed-"))
    closed.chmod(0o700)
    venv = closed / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {sys.version_info[0]}.{sys.version_info[1]}.0\n")
    server = nginx_factory(location("/", APPS / "sleepy.py"), home=False,
                           http_extra=f"wsgi_python_home {venv};")
    server.conf.write_text(server.conf.read_text().replace("user root root;", "user nobody nogroup;"))
    result = server.run("-t")
    assert result.returncode != 0
    assert f"{venv} cannot be reached by uid" in result.stderr and "(the workers' user)" in result.stderr, \
        result.stderr


def test_working_directory_is_the_apps_and_the_checks(nginx_factory, tmp_path):
    """nginx's `working_directory` is where the workers are when they import the apps: an app's
    relative paths resolve there, and the configuration check imports from there too."""
    app = tmp_path / "relative_app.py"
    app.write_text(
        "import os\n"
        "SETTING = open('settings.txt').read().strip()\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [f'{SETTING} {os.getcwd()}'.encode()]\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "settings.txt").write_text("from-the-working-directory\n")

    elsewhere = nginx_factory(location("/", str(app)))
    result = elsewhere.run("-t")
    assert result.returncode != 0
    assert "FileNotFoundError" in result.stderr and "settings.txt" in result.stderr, result.stderr

    server = nginx_factory(location("/", str(app)), main_extra=f"working_directory {workdir};\n")
    assert server.run("-t").returncode == 0
    server.start()
    assert requests.get(server.url("/"), timeout=10).text == f"from-the-working-directory {workdir}"

    missing = nginx_factory(location("/", str(app)), main_extra=f"working_directory {tmp_path}/absent;\n")
    result = missing.run("-t")
    assert result.returncode != 0
    assert f'cannot enter their working directory "{tmp_path}/absent"' in result.stderr, result.stderr


@pytest.mark.parametrize("beside, directive", [("proxy_pass http://127.0.0.1:1;", "wsgi_app"),
                                               ("wsgi_status;", "wsgi_status")])
def test_an_app_beside_another_content_handler_fails_the_check(nginx_factory, beside, directive):
    # One of them would answer unseen (the app did, whichever came first).
    _, result = conf_test(nginx_factory, location("/", APPS / "sleepy.py", beside))
    assert result.returncode != 0
    assert f"{directive} is in a location" in result.stderr, result.stderr


def test_an_if_blocks_own_proxy_pass_answers_in_an_app_location(nginx_factory):
    # The block inherits the app, as nginx's blocks inherit their location's settings, but its
    # own content handler answers there (the app answered, the proxy_pass unseen).
    server = nginx_factory(
        location("/", APPS / "environ_app.py",
                 "proxy_set_header X-Proxied 1; if ($to_proxy) { proxy_pass http://127.0.0.1:$server_port; }"),
        http_extra='map "$arg_legacy:$http_x_proxied" $to_proxy { default 0; "1:" 1; }').start()
    assert "HTTP_X_PROXIED" not in requests.get(server.url("/?legacy=0"), timeout=10).json()
    assert requests.get(server.url("/?legacy=1"), timeout=10).json()["HTTP_X_PROXIED"] == "1"
