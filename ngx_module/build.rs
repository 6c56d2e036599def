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
    // nginx 1.21.6 records whether it adds the shared listening sockets with EPOLLEXCLUSIVE
    // (`ngx_use_exclusive_accept`, for its re-adding them to balance the workers); older builds
    // (Ubuntu 22.04's 1.18) decide it on the same conditions without keeping the answer.
    println!("cargo::rustc-check-cfg=cfg(ngx_use_exclusive_accept)");
    if version >= 1_021_006 {
        println!("cargo::rustc-cfg=ngx_use_exclusive_accept");
    }
    // nginx 1.21.1 refuses a request with both Content-Length and Transfer-Encoding; older ones
    // serve it as chunked on a connection kept open (`request_body::read_then` closes it).
    println!("cargo::rustc-check-cfg=cfg(ngx_refuses_length_with_chunked)");
    if version >= 1_021_001 {
        println!("cargo::rustc-cfg=ngx_refuses_length_with_chunked");
    }
    if let Ok(version) = env::var("DEP_NGINX_VERSION") {
        println!("cargo::rustc-env=NGX_WSGI_NGINX_VERSION={version}");
    }
}
