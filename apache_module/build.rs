// Generates bindings to Apache httpd 2.4 and APR from the installed development headers (Debian:
// apache2-dev), and links the module to the libpython the core was built for, with an rpath so the
// same one loads inside apache2.
use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The output of `tool args`, trimmed; None when the tool is missing or fails.
fn query(tool: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(tool).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo::rerun-if-changed=wrapper.h");
    println!("cargo::rerun-if-env-changed=APXS");
    println!("cargo::rerun-if-env-changed=APR_CONFIG");

    let apxs = env::var("APXS").unwrap_or_else(|_| "apxs".into());
    let apr_config = env::var("APR_CONFIG").unwrap_or_else(|_| "apr-1-config".into());
    let httpd_include = query(&apxs, &["-q", "INCLUDEDIR"]).unwrap_or_else(|| {
        panic!("`{apxs} -q INCLUDEDIR` failed: install Apache's development files (Debian: apt-get install apache2-dev)")
    });
    let mut clang_args = vec![format!("-I{httpd_include}")];
    for flags in [
        query(&apr_config, &["--includes"]),
        query(&apr_config, &["--cppflags"]),
    ]
    .into_iter()
    .flatten()
    {
        clang_args.extend(flags.split_whitespace().map(str::to_owned));
    }

    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("ap_.*|apr_.*")
        .allowlist_type("process_rec|core_dir_config|apr_table_entry_t|request_rec|conn_rec|server_rec|module_struct|command_rec|cmd_parms|ap_directive_t|unixd_config_rec")
        .allowlist_var("core_module|ap_server_conf|ap_unixd_config|ap_server_root|ap_bucket_type_error|ap_conftree|ap_listeners")
        .allowlist_var("MODULE_MAGIC_.*|APR_HOOK_.*|OK|DECLINED|DONE|HTTP_.*|RSRC_CONF|ACCESS_CONF|OR_.*")
        .allowlist_var("APLOG_.*|REQUEST_CHUNKED_.*|APR_SUCCESS|NOT_IN_.*|GLOBAL_ONLY|APR_FOPEN_.*")
        .allowlist_var("APR_EOF|APR_ECONNABORTED|APR_OS_START_.*|AP_SQ_.*|M_GET|M_METHODS|AP_MPMQ_.*")
        .allowlist_var("ENABLE_SENDFILE_ON|ENABLE_MMAP_OFF|SERVER_READY|SERVER_BUSY_DNS")
        .layout_tests(false)
        .generate_comments(false)
        .derive_default(true)
        .generate()
        .expect("cannot generate the Apache bindings");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("cannot write the Apache bindings");
}
