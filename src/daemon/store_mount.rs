//! The image store on a `nosuid,nodev` bind mount of its own: images are extracted with
//! their setuid bits and `security.capability` xattrs (the container needs the files as
//! built), so on the host nothing below `images/` may grant privileges when executed, even
//! through an fd or a path a local user obtains. Inside containers `no_new_privs` keeps them
//! inert as well.
//!
//! Idempotent: a start finds an existing one (a crash's, or an operator's) in
//! /proc/self/mountinfo and reuses it; a clean stop removes the mount faasd made (this
//! run, or a crashed one: a marker file beside the store says so), so that the state dir
//! can be removed like any directory afterwards; an operator's stays. Staging, commit and retire renames all stay inside
//! `images/`, so the mount boundary never splits a rename. The runc backend bind-mounts
//! rootfs directories from below it, which is unaffected.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Why the store could not be put on its own `nosuid,nodev` mount.
#[derive(Debug, thiserror::Error)]
pub enum StoreMountError {
    #[error("resolving the image store {path} failed: {source}")]
    Resolve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading /proc/self/mountinfo failed: {0}")]
    MountInfo(#[source] std::io::Error),
    #[error("bind-mounting the image store {path} on itself failed: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("making the image store mount {path} private failed: {source}")]
    Private {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("remounting the image store {path} nosuid,nodev failed: {source}")]
    Remount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The per-mount options (`rw,nosuid,...`) of the topmost mount whose mount point is `dir`
/// (already canonical), or `None` when `dir` is not a mount point.
pub(crate) fn mount_options(mountinfo: &str, dir: &Path) -> Option<Vec<String>> {
    let want = dir.as_os_str().as_encoded_bytes();
    mountinfo.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let point = fields.nth(4)?;
        let options = fields.next()?;
        (unescape(point) == want).then(|| options.split(',').map(str::to_string).collect())
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Puts `images` on a private `nosuid,nodev` bind mount of itself unless it already is one.
pub fn ensure_nosuid(images: &Path) -> Result<Option<OurMount>, StoreMountError> {
    let dir = images
        .canonicalize()
        .map_err(|source| StoreMountError::Resolve {
            path: images.to_path_buf(),
            source,
        })?;
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(StoreMountError::MountInfo)?;
    let marker = marker_of(&dir);
    let mut made_here = false;
    let options = match mount_options(&info, &dir) {
        Some(o) if o.iter().any(|x| x == "nosuid") && o.iter().any(|x| x == "nodev") => {
            // A crashed run's mount is ours to remove at this run's clean stop.
            return Ok(marker.exists().then(|| OurMount(dir)));
        }
        Some(o) => o,
        None => {
            mount(
                Some(&dir),
                &dir,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| StoreMountError::Bind {
                path: dir.clone(),
                source,
            })?;
            // Private: mounts made below the store (by runc, say) do not propagate out.
            mount(
                None::<&str>,
                &dir,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|source| StoreMountError::Private {
                path: dir.clone(),
                source,
            })?;
            made_here = true;
            if let Err(e) = std::fs::write(&marker, b"") {
                tracing::warn!("marking the image store mount ours failed: {e}");
            }
            Vec::new()
        }
    };
    // A bind remount sets every per-mount flag: keep an operator's ro / noexec.
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (name, flag) in [("ro", MsFlags::MS_RDONLY), ("noexec", MsFlags::MS_NOEXEC)] {
        if options.iter().any(|o| o == name) {
            flags |= flag;
        }
    }
    mount(None::<&str>, &dir, None::<&str>, flags, None::<&str>).map_err(|source| {
        StoreMountError::Remount {
            path: dir.clone(),
            source,
        }
    })?;
    Ok(made_here.then_some(OurMount(dir)))
}

/// The file beside the store that says its mount is faasd's, not an operator's.
fn marker_of(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".faasd-mount");
    store.with_file_name(name)
}

/// The store mount faasd made (this run or a crashed one), removed when dropped: at a
/// clean stop, or when the daemon fails to start after making it.
pub struct OurMount(PathBuf);

impl Drop for OurMount {
    fn drop(&mut self) {
        match umount2(&self.0, MntFlags::MNT_DETACH) {
            Ok(()) => {
                let _ = std::fs::remove_file(marker_of(&self.0));
            }
            Err(e) => tracing::warn!(
                "removing the image store mount {} failed: {e}",
                self.0.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 254:0 /var/lib/faasd/images /var/lib/faasd/images rw,relatime shared:1 - ext4 /dev/vda rw
41 40 254:0 /var/lib/faasd/images /var/lib/faasd/images rw,nosuid,nodev,relatime - ext4 /dev/vda rw
42 22 254:0 /a\\040b /a\\040b ro,noexec - ext4 /dev/vda rw
";

    #[test]
    fn the_topmost_mount_decides() {
        let o = mount_options(INFO, Path::new("/var/lib/faasd/images")).unwrap();
        assert_eq!(o, ["rw", "nosuid", "nodev", "relatime"]);
        assert_eq!(mount_options(INFO, Path::new("/var/lib/faasd")), None);
    }

    #[test]
    fn escaped_mount_points_match() {
        let o = mount_options(INFO, Path::new("/a b")).unwrap();
        assert_eq!(o, ["ro", "noexec"]);
    }
}
