//! Test-environment shim: resolve a file path inside the pod to the host path when running
//! under the e2e pod runner.
//!
//! A real kubelet mounts Secret volumes at their `mountPath`. The project's test pod runner
//! (e2e/controlplane) runs containers as host processes and mounts nothing; it materialises each
//! volume in a host directory and tells the process where through
//! `POD_RUNNER_MOUNTS=mountPath1=hostDir1:mountPath2=hostDir2`. Without that variable (every
//! real cluster, every local run) paths are returned unchanged.

use std::path::{Path, PathBuf};

/// The host path for `path`, following `POD_RUNNER_MOUNTS` when it is set.
pub fn resolve(path: &Path) -> PathBuf {
    match std::env::var("POD_RUNNER_MOUNTS") {
        Ok(mounts) => resolve_with(path, &mounts),
        Err(_) => path.to_path_buf(),
    }
}

/// `resolve` with the mapping given explicitly; the longest matching mount path wins.
pub fn resolve_with(path: &Path, mounts: &str) -> PathBuf {
    let best = mounts
        .split(':')
        .filter_map(|m| m.split_once('='))
        .filter(|(mount, _)| !mount.is_empty() && path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.len());
    match best {
        Some((mount, host)) => match path.strip_prefix(mount) {
            Ok(rest) if rest.as_os_str().is_empty() => PathBuf::from(host),
            Ok(rest) => Path::new(host).join(rest),
            Err(_) => path.to_path_buf(),
        },
        None => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_longest_mount_and_leaves_others() {
        let m = "/etc/mongoferry=/h/a:/etc/mongoferry/source=/h/b:/x=/h/x";
        assert_eq!(
            resolve_with(Path::new("/etc/mongoferry/source/password"), m),
            PathBuf::from("/h/b/password")
        );
        assert_eq!(
            resolve_with(Path::new("/etc/mongoferry/token"), m),
            PathBuf::from("/h/a/token")
        );
        assert_eq!(resolve_with(Path::new("/x"), m), PathBuf::from("/h/x"));
        assert_eq!(
            resolve_with(Path::new("/etc/mongoferry-other/f"), m),
            PathBuf::from("/etc/mongoferry-other/f")
        );
        assert_eq!(
            resolve_with(Path::new("/tmp/f"), ""),
            PathBuf::from("/tmp/f")
        );
    }
}
