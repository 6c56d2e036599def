//! Whether a user (the nginx workers') can read a path, from the permission bits of the path and
//! of every directory above it, so that the answer names the component that stops them.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub struct User {
    pub name: String,
    uid: u32,
    groups: Vec<u32>,
}

impl User {
    pub fn by_name(name: &str) -> Option<User> {
        let c_name = CString::new(name).ok()?;
        // SAFETY: getpwnam returns NULL or a pointer to a static record, read at once.
        let (uid, gid) = unsafe {
            let pw = libc::getpwnam(c_name.as_ptr());
            if pw.is_null() {
                return None;
            }
            ((*pw).pw_uid, (*pw).pw_gid)
        };
        let mut groups = vec![0 as libc::gid_t; 256];
        let mut count = groups.len() as libc::c_int;
        // SAFETY: the buffer holds `count` gids; getgrouplist writes at most that many and sets
        // `count` to the number it found.
        let found =
            unsafe { libc::getgrouplist(c_name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        groups.truncate(if found < 0 { 1 } else { count.max(0) as usize });
        if found < 0 {
            groups[0] = gid;
        }
        Some(User {
            name: name.to_owned(),
            uid,
            groups,
        })
    }

    /// Whether the permission bits give this user `bits` (4 read, 1 search) on a file.
    fn allowed(&self, meta: &std::fs::Metadata, bits: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.permissions().mode();
        let class = if meta.uid() == self.uid {
            mode >> 6
        } else if self.groups.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        class & bits == bits
    }

    /// None when the user can reach and read `path`, else which component stops them and why.
    pub fn cannot_read(&self, path: &Path) -> Option<String> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let mut walked = PathBuf::new();
        let components: Vec<_> = path.components().collect();
        for (i, c) in components.iter().enumerate() {
            walked.push(c);
            let meta = match std::fs::metadata(&walked) {
                Ok(m) => m,
                Err(e) => return Some(format!("{}: {e}", walked.display())),
            };
            let last = i + 1 == components.len();
            let need = match (last, meta.is_dir()) {
                (false, _) => 1,
                (true, true) => 5,
                (true, false) => 4,
            };
            if !self.allowed(&meta, need) {
                let what = if need == 1 {
                    "does not let them in"
                } else {
                    "is not readable by them"
                };
                return Some(format!(
                    "{} ({} {}) {what}",
                    walked.display(),
                    mode_text(&meta),
                    owner_and_group(&meta)
                ));
            }
        }
        None
    }
}

fn mode_text(meta: &std::fs::Metadata) -> String {
    let mode = meta.permissions().mode();
    let mut s = String::from(if meta.is_dir() { "d" } else { "-" });
    for shift in [6, 3, 0] {
        let bits = mode >> shift;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// "owner:group" of a file, by name where the account databases have one, else by number.
fn owner_and_group(meta: &std::fs::Metadata) -> String {
    let (uid, gid) = (meta.uid(), meta.gid());
    // SAFETY: getpwuid/getgrgid return NULL or a pointer to a static record, read at once.
    let (owner, group) = unsafe {
        let pw = libc::getpwuid(uid);
        let owner =
            (!pw.is_null()).then(|| CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned());
        let gr = libc::getgrgid(gid);
        let group =
            (!gr.is_null()).then(|| CStr::from_ptr((*gr).gr_name).to_string_lossy().into_owned());
        (owner, group)
    };
    format!(
        "{}:{}",
        owner.unwrap_or_else(|| uid.to_string()),
        group.unwrap_or_else(|| gid.to_string())
    )
}
