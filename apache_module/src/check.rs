//! Configuration-time check: before Apache accepts a configuration (`apache2 -t`, start, restart),
//! start Python and import every app in a short-lived child process running as the children's
//! user, so that a broken app fails the configuration, naming the directive and the Python error,
//! instead of leaving a server whose every request is a 500. The parent itself never starts
//! Python: its children are forked from it.

use std::ffi::c_int;

use ngx_wsgi::check::{check_apps, CheckError, Credentials, WorkerSetup};
use ngx_wsgi::AppSpec;

use crate::bindings::{
    ap_state_query, ap_unixd_config, apr_pool_t, server_rec, APLOG_EMERG, AP_SQ_CONFIG_GEN,
    AP_SQ_MAIN_STATE, AP_SQ_MS_CREATE_CONFIG, HTTP_INTERNAL_SERVER_ERROR, OK,
};
use crate::ffi_guard::guard;

pub(crate) unsafe extern "C" fn check_config(
    _pconf: *mut apr_pool_t,
    _plog: *mut apr_pool_t,
    _ptemp: *mut apr_pool_t,
    _s: *mut server_rec,
) -> c_int {
    guard("check_config", HTTP_INTERNAL_SERVER_ERROR as c_int, || {
        // The check's processes and the children (forked from this one, after every reading of
        // the configuration: the module may be loaded afresh for each) name it in their messages.
        ngx_wsgi::interpreter::name_shutdown_timeout("NgxWsgiShutdownTimeout");
        // SAFETY: plain queries of Apache's state.
        let (state, generation) = unsafe {
            (
                ap_state_query(AP_SQ_MAIN_STATE as c_int),
                ap_state_query(AP_SQ_CONFIG_GEN as c_int),
            )
        };
        // A start reads the configuration twice: the first reading (generation 0, also the only
        // one of `apache2 -t`) is checked, before Apache opens its listeners; the second one
        // (generation 1), of the same files, is not. Restarts (later generations) are checked.
        if state == AP_SQ_MS_CREATE_CONFIG as c_int && generation == 1 {
            return OK as c_int;
        }
        // `apache2 -k stop` (`graceful-stop`, which Debian's unit stops with) reads the
        // configuration only to find the running server and signal it: an app that does not
        // import now (a deploy half done, a database it needs down) must not keep a server from
        // stopping, and nothing is started with this configuration.
        if generation == 0 && stops_the_server() {
            return OK as c_int;
        }
        let registry = crate::config::snapshot();
        if registry.apps.is_empty() {
            return OK as c_int;
        }
        let specs: Vec<AppSpec> = registry.apps.iter().map(|a| a.spec.clone()).collect();
        let Err(errors) = check_apps(&registry.python, &specs, &worker_setup(&registry)) else {
            return OK as c_int;
        };
        for error in errors {
            let msg = match error {
                CheckError::App(i, e) => {
                    format!("{} cannot be loaded: {e}", registry.apps[i].describe())
                }
                CheckError::Interpreter(e) => match &registry.python.home {
                    Some(home) => format!(
                        "NgxWsgiPythonHome \"{}\" (in {}): {e}",
                        home.display(),
                        registry.python_home_at
                    ),
                    None => format!("wsgi: {e}"),
                },
                CheckError::Process(e) => format!("wsgi: checking the apps failed: {e}"),
            };
            crate::log::write(APLOG_EMERG as c_int, &msg);
        }
        HTTP_INTERNAL_SERVER_ERROR as c_int
    })
}

/// Whether this process was started to stop the running server (`-k stop`, `-k graceful-stop`),
/// from its command line as the kernel keeps it (Apache takes `-k` out of the `argv` it keeps).
fn stops_the_server() -> bool {
    let Ok(line) = std::fs::read("/proc/self/cmdline") else {
        return false;
    };
    let args: Vec<&[u8]> = line.split(|&b| b == 0).collect();
    command_of(&args).is_some_and(|k| k == b"stop" || k == b"graceful-stop")
}

/// The value of `-k` (`-k stop` or `-kstop`) in a command line.
fn command_of<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        match arg.strip_prefix(b"-k") {
            Some(b"") => return args.next().copied(),
            Some(rest) => return Some(rest),
            None => {}
        }
    }
    None
}

/// How Apache will start its children: as `User`/`Group` when it runs as root; the environment
/// is the parent's, which the children inherit.
fn worker_setup(registry: &crate::config::Registry) -> WorkerSetup {
    // SAFETY: geteuid has no preconditions; `ap_unixd_config` is filled while the configuration
    // is read (User/Group, or Apache's defaults) and only read here.
    let credentials = unsafe {
        (libc::geteuid() == 0).then(|| Credentials {
            uid: ap_unixd_config.user_id,
            gid: ap_unixd_config.group_id,
            user: (!ap_unixd_config.user_name.is_null())
                .then(|| std::ffi::CStr::from_ptr(ap_unixd_config.user_name).to_owned()),
        })
    };
    WorkerSetup {
        credentials,
        environment: None,
        shutdown_timeout: registry.shutdown_timeout(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::command_of;

    #[test]
    fn finds_the_k_command_in_either_spelling() {
        let line = |args: &[&'static str]| -> Vec<&'static [u8]> {
            args.iter().map(|a| a.as_bytes()).collect()
        };
        assert_eq!(
            command_of(&line(&["apache2", "-f", "x.conf", "-k", "stop"])),
            Some(&b"stop"[..])
        );
        assert_eq!(
            command_of(&line(&["apache2", "-kgraceful-stop"])),
            Some(&b"graceful-stop"[..])
        );
        assert_eq!(command_of(&line(&["apache2", "-t"])), None);
        assert_eq!(command_of(&line(&["apache2", "-k"])), None);
        assert_eq!(
            command_of(&line(&["-k", "stop"])),
            None,
            "argv[0] is the program"
        );
    }
}
