// The core links libpython (through pyo3) for its own unit tests; record where that libpython lives
// so the test binaries load the same one, and tell the interpreter which python it was built for.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    // The core relies on the GIL: a request's objects, the start_response state and the
    // interpreter's thread states are only safe because one thread runs Python at a time.
    if config.is_free_threaded() {
        panic!(
            "ngx-wsgi needs a CPython with the GIL; {} is a free-threaded build (python3.Xt). \
             Build against a regular CPython (PYO3_PYTHON=/usr/bin/python3).",
            config.executable().unwrap_or("the configured Python")
        );
    }
    if let Some(executable) = config.executable() {
        println!("cargo:rustc-env=NGX_WSGI_BUILD_PYTHON={executable}");
        // Its standard library: a virtualenv made with another installation of the same
        // version would bring that one's (and its C extensions, built for another patch level).
        let stdlib = std::process::Command::new(executable)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('stdlib'))",
            ])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok());
        if let Some(stdlib) = stdlib {
            println!("cargo:rustc-env=NGX_WSGI_BUILD_STDLIB={}", stdlib.trim());
        }
    }
    println!(
        "cargo:rustc-env=NGX_WSGI_BUILD_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
