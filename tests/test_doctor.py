"""`ngx-wsgi doctor` on real files: the built module and nginx, copies of the module that nginx
refuses (checked against nginx's own refusal), virtualenvs of another Python or that the workers'
user cannot read, and Debian's nginx when it is installed."""
import os
import pathlib
import pwd
import re
import struct
import subprocess
import sys
import tempfile

import pytest

from conftest import APPS, RELEASE, Nginx, location
from pythons import venv_of_another_installation, venv_of_other_python

EMBEDDED = f"{sys.version_info[0]}.{sys.version_info[1]}"
ME = pwd.getpwuid(os.geteuid()).pw_name
DEBIAN_NGINX = pathlib.Path("/usr/sbin/nginx")


def doctor(*args):
    return subprocess.run([str(RELEASE / "ngx-wsgi"), "doctor", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def identity(output, what):
    """(version, signature) from doctor's `nginx` or `module` line."""
    m = re.search(rf"^{what} +\S+: (?:built for )?nginx ([\d.]+), signature (\S+)$", output, re.M)
    assert m, output
    return m.group(1), m.group(2)


def nginx_number(version):
    major, minor, patch = map(int, version.split("."))
    return major * 1_000_000 + minor * 1000 + patch


def patched_module(module, tmp_path, old, new, occurrences=(1,)):
    """A copy of the module with `old` (found as many times as expected) replaced by `new`."""
    data = pathlib.Path(module).read_bytes()
    assert data.count(old) in occurrences, f"{old!r} occurs {data.count(old)} times"
    copy = tmp_path / "libngx_http_wsgi_module.so"
    copy.write_bytes(data.replace(old, new))
    return copy


def test_built_module_matches_the_vendored_nginx(built):
    module, nginx = built
    result = doctor("--nginx", nginx, "--module", module, "--user", ME)
    assert result.returncode == 0, result.stdout + result.stderr
    assert identity(result.stdout, "nginx") == identity(result.stdout, "module")
    assert "ok      nginx loads this module: same version and build signature" in result.stdout
    assert re.search(rf"^python +the module embeds Python {EMBEDDED}: \S+libpython{EMBEDDED}\.so", result.stdout,
                     re.M), result.stdout
    assert f"ok      {ME} can read libpython{EMBEDDED} and its standard library" in result.stdout
    assert result.stdout.endswith("no problem found\n")


def test_other_build_signature_is_reported_as_nginx_refuses_it(built, tmp_path):
    module, nginx = built
    _, signature = identity(doctor("--nginx", nginx, "--module", module).stdout, "module")
    # Flip flag 26, NGX_HTTP_GZIP: what a module built against an nginx without gzip carries.
    sizes, flags = signature.rsplit(",", 1)
    flipped = flags[:25] + ("0" if flags[25] == "1" else "1") + flags[26:]
    copy = patched_module(module, tmp_path, f"{signature}\0".encode(), f"{sizes},{flipped}\0".encode())

    result = doctor("--nginx", nginx, "--module", copy, "--user", ME)
    assert result.returncode == 1
    assert (f'PROBLEM nginx refuses it: "module "{copy}" is not binary compatible": same nginx version, other '
            f"build configuration (flag 26 (NGX_HTTP_GZIP): nginx {flags[25]}, module {flipped[25]})") in result.stdout
    server = Nginx((str(copy), nginx), location("/", APPS / "sleepy.py"))
    refused = server.run("-t")
    assert refused.returncode != 0
    assert f'module "{copy}" is not binary compatible' in refused.stderr, refused.stderr


def test_other_nginx_version_is_reported_as_nginx_refuses_it(built, tmp_path):
    module, nginx = built
    version, _ = identity(doctor("--nginx", nginx, "--module", module).stdout, "module")
    number = nginx_number(version)
    older = number - 2000  # two minor versions back, e.g. 1.26.3 for 1.28.3
    # The version field of the module's ngx_module_t, found by the fields before it (NGX_MODULE_V1:
    # ctx_index and index unset, then name, spare0 and spare1 zero): the bare 8 bytes of the
    # number can also occur elsewhere in the file (debug information's offsets, say).
    head = b"\xff" * 16 + b"\x00" * 24
    copy = patched_module(module, tmp_path, head + struct.pack("<Q", number), head + struct.pack("<Q", older))

    result = doctor("--nginx", nginx, "--module", copy, "--user", ME)
    assert result.returncode == 1
    assert (f'PROBLEM nginx refuses it: "module "{copy}" version {older} instead of {number}": the module was '
            f"built for nginx {older // 1_000_000}.{older // 1000 % 1000}.{older % 1000}, this is nginx {version}"
            in result.stdout), result.stdout
    refused = Nginx((str(copy), nginx), location("/", APPS / "sleepy.py")).run("-t")
    assert f'module "{copy}" version {older} instead of {number}' in refused.stderr, refused.stderr


def test_symbol_this_nginx_lacks_is_reported_as_nginx_refuses_it(built, tmp_path):
    """What a module built with threads meets in an nginx configured without them: dlopen fails."""
    module, nginx = built
    # Its name in the dynamic string table, and in the symbol table when the module is not stripped.
    copy = patched_module(module, tmp_path, b"ngx_thread_task_post\0", b"ngx_thread_task_p0st\0", (1, 2))
    result = doctor("--nginx", nginx, "--module", copy, "--user", ME)
    assert result.returncode == 1
    assert (f'PROBLEM nginx refuses it: dlopen() "{copy}" fails (undefined symbol: ngx_thread_task_p0st)'
            in result.stdout), result.stdout
    refused = Nginx((str(copy), nginx), location("/", APPS / "sleepy.py")).run("-t")
    assert f'dlopen() "{copy}" failed ({copy}: undefined symbol: ngx_thread_task_p0st)' in refused.stderr, \
        refused.stderr


def test_a_file_that_is_not_a_module(built):
    _, nginx = built
    result = doctor("--nginx", nginx, "--module", "/bin/true", "--user", ME)
    assert result.returncode == 1
    assert "PROBLEM /bin/true has no ngx_modules table: it is not an nginx dynamic module" in result.stdout


def test_virtualenv_of_another_python(built, tmp_path):
    version, venv = venv_of_other_python(tmp_path)
    module, nginx = built
    result = doctor("--nginx", nginx, "--module", module, "--python-home", venv, "--user", ME)
    assert result.returncode == 1
    assert (f"PROBLEM wsgi_python_home {venv} is Python {version}; this module embeds Python {EMBEDDED} (nginx -t "
            "refuses it)") in result.stdout, result.stdout


def test_virtualenv_of_another_installation_of_the_same_python(built, tmp_path):
    python, venv = venv_of_another_installation(tmp_path)
    module, nginx = built
    result = doctor("--nginx", nginx, "--module", module, "--python-home", venv, "--user", ME)
    assert result.returncode == 1
    base = pathlib.Path(python).parent.parent
    assert (f"PROBLEM wsgi_python_home {venv} is a virtualenv of another Python {EMBEDDED} installation, "
            f"whose standard library is {base}/lib/python{EMBEDDED} (nginx -t refuses it)") in result.stdout, result.stdout


def test_virtualenv_the_workers_cannot_enter(built):
    module, nginx = built
    base = pathlib.Path(tempfile.mkdtemp(prefix="ngx-wsgi-doctor-"))
    try:
        base.chmod(0o755)
        private = base / "home"
        private.mkdir(mode=0o700)
        venv = private / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        result = doctor("--nginx", nginx, "--module", module, "--python-home", venv, "--user", "nobody")
        assert result.returncode == 1
        assert re.search(rf"^home +wsgi_python_home {venv} \(--python-home\): Python {EMBEDDED} ", result.stdout,
                         re.M), result.stdout
        assert (f"PROBLEM nobody cannot use wsgi_python_home {venv}: {private} (drwx------ {ME}:") in result.stdout, \
            result.stdout
        private.chmod(0o755)
        assert f"ok      nobody can read {venv}/lib/python{EMBEDDED}/site-packages" in doctor(
            "--nginx", nginx, "--module", module, "--python-home", venv, "--user", "nobody").stdout
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_embedded_python_readable_by_the_workers_or_named(built):
    """A module built for a Python under a private directory (pyenv under /root) cannot be used by
    nginx's unprivileged workers: the first directory that stops them is named."""
    module, nginx = built
    result = doctor("--nginx", nginx, "--module", module, "--user", "nobody")
    blocking = next((p for p in reversed(pathlib.Path(sys.base_prefix).parents) if not os.stat(p).st_mode & 0o001),
                    None)
    if blocking is None:
        assert f"ok      nobody can read libpython{EMBEDDED} and its standard library" in result.stdout
        assert result.returncode == 0, result.stdout
    else:
        assert f"PROBLEM nobody cannot use the embedded Python: {blocking} (d" in result.stdout, result.stdout
        assert "does not let them in" in result.stdout
        assert result.returncode == 1


@pytest.mark.skipif(not DEBIAN_NGINX.exists(), reason="Debian's nginx is not installed")
def test_built_module_against_debians_nginx(built):
    module, nginx = built
    debian_version = subprocess.run([DEBIAN_NGINX, "-v"], capture_output=True, text=True).stderr.split("/")[1].strip()
    result = doctor("--nginx", DEBIAN_NGINX, "--module", module, "--user", ME)
    assert identity(result.stdout, "nginx")[0] == debian_version
    built_version, _ = identity(result.stdout, "module")
    refused = Nginx((module, str(DEBIAN_NGINX)), location("/", APPS / "sleepy.py")).run("-t")
    if built_version != debian_version:
        assert result.returncode == 1
        message = f'module "{module}" version {nginx_number(built_version)} instead of {nginx_number(debian_version)}'
        assert f'PROBLEM nginx refuses it: "{message}"' in result.stdout
        assert message in refused.stderr, refused.stderr
    else:
        assert ("ok      nginx loads this module" in result.stdout) == (refused.returncode == 0), refused.stderr
