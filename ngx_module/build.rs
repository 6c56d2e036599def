// Links the module to the libpython the core was built for (with an rpath, so the same one loads
// at run time), exposes the nginx build's feature flags as cfgs, and records where that nginx
// build lives for the `ngx-wsgi` helper binary; finds where nginx's C compiler puts the bitfields
// the module uses, for the module to check its bindings against.
use std::env;

#[path = "build/bitfield_probe.rs"]
mod bitfield_probe;

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
    bitfield_probe::generate();

    let values = env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_default();
    println!("cargo::rustc-check-cfg=cfg(ngx_feature, values({values}))");
    for feature in env::var("DEP_NGINX_FEATURES")
        .unwrap_or_default()
        .split(',')
    {
        if !feature.is_empty() {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }
    if let Ok(dir) = env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo::rustc-env=NGX_WSGI_NGINX_BUILD_DIR={dir}");
    }
    // nginx 1.23 linked repeated headers through `ngx_table_elt_t.next`; older builds (Debian
    // 12's 1.22) have no such field.
    println!("cargo::rustc-check-cfg=cfg(ngx_table_elt_next)");
    let version: u64 = env::var("DEP_NGINX_VERSION_NUMBER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if version >= 1_023_000 {
        println!("cargo::rustc-cfg=ngx_table_elt_next");
    }
    if let Ok(version) = env::var("DEP_NGINX_VERSION") {
        println!("cargo::rustc-env=NGX_WSGI_NGINX_VERSION={version}");
    }
}
