//! The image config (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`) and its resolution
//! into the function's run configuration.

use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};

use super::error::ImageError;
use super::fsutil::read_in_root;

/// How a function's process is started; stored as `config.json` next to `rootfs/`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    /// `Entrypoint` + `Cmd`; `["/bin/sh"]` when both are empty.
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=value` strings.
    pub env: Vec<String>,
    /// `WorkingDir`; `/` when unset.
    pub working_dir: String,
    /// From `User`, resolved against the image's /etc/passwd.
    pub uid: u32,
    /// From `User` (`uid:gid`, `name:group`) or the user's primary group.
    pub gid: u32,
}

/// Docker accepts a string or a list for Entrypoint / Cmd.
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrVec {
    One(String),
    Many(Vec<String>),
}

impl StrOrVec {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrOrVec::One(s) => vec![s],
            StrOrVec::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    entrypoint: Option<StrOrVec>,
    cmd: Option<StrOrVec>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawImage {
    config: Option<RawConfig>,
}

/// The image config before `User` is resolved.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParsedConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

pub(crate) fn parse_config(name: &str, doc: &[u8]) -> Result<ParsedConfig, ImageError> {
    let raw: RawImage = serde_json::from_slice(doc).map_err(|e| ImageError::BadConfig {
        name: name.into(),
        reason: e.to_string(),
    })?;
    let c = raw.config.unwrap_or_default();
    let mut cmd = c.entrypoint.map(StrOrVec::into_vec).unwrap_or_default();
    cmd.extend(c.cmd.map(StrOrVec::into_vec).unwrap_or_default());
    if cmd.is_empty() {
        cmd = vec!["/bin/sh".to_string()];
    }
    let wd = c.working_dir.unwrap_or_default();
    let working_dir = if wd.is_empty() {
        "/".to_string()
    } else if wd.starts_with('/') {
        wd
    } else {
        format!("/{wd}")
    };
    refuse_kernel_fs(
        name,
        "WorkingDir",
        &working_dir,
        &normalize("/", &working_dir),
    )?;
    // A bare name is looked up in the image's PATH at run time, where /proc and /sys are
    // empty directories; a path with a slash is taken as it is, from WorkingDir.
    if cmd[0].contains('/') {
        refuse_kernel_fs(
            name,
            "Entrypoint/Cmd",
            &cmd[0],
            &normalize(&working_dir, &cmd[0]),
        )?;
    }
    Ok(ParsedConfig {
        cmd,
        env: c.env.unwrap_or_default(),
        working_dir,
        user: c.user.unwrap_or_default(),
    })
}

/// The kernel filesystems every container gets: a process started there reaches past the
/// image through magic links (`/proc/self/exe`, `/proc/<pid>/cwd`, ...).
const KERNEL_FS: [&str; 2] = ["/proc", "/sys"];

/// `path` made absolute against `base` (itself absolute), with `.`, `..` and duplicate
/// slashes resolved the way the kernel walks them from `/` (`..` of `/` is `/`).
pub(crate) fn normalize(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in joined.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

fn refuse_kernel_fs(
    name: &str,
    field: &'static str,
    path: &str,
    normalized: &str,
) -> Result<(), ImageError> {
    let under = |fs: &str| {
        normalized
            .strip_prefix(fs)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if KERNEL_FS.iter().any(|fs| under(fs)) {
        return Err(ImageError::KernelFsPath {
            name: name.into(),
            field,
            path: path.into(),
        });
    }
    Ok(())
}

const MAX_DB: u64 = 16 << 20;

/// Looks `key` up in a colon-separated database (passwd / group): returns the fields of the
/// line whose name (field 0) or, when `key` is numeric, id (field 2) matches.
fn lookup<'a>(db: &'a str, key: &str) -> Option<Vec<&'a str>> {
    db.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == key)
}

fn user_err(user: &str, reason: impl Into<String>) -> ImageError {
    ImageError::User {
        user: user.into(),
        reason: reason.into(),
    }
}

/// Resolves Docker's `User` forms (`""`, `uid`, `uid:gid`, `name`, `name:group`, `uid:group`,
/// `name:gid`) against the rootfs's /etc/passwd and /etc/group.
pub(crate) fn resolve_user(root: impl AsFd, user: &str) -> Result<(u32, u32), ImageError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let read = |p: &str| -> Result<String, ImageError> {
        let bytes = read_in_root(root.as_fd(), p, MAX_DB)
            .map_err(|e| user_err(user, format!("cannot read /{p}: {e}")))?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() {
        return Err(user_err(user, "the user part is empty"));
    }
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let passwd = read("etc/passwd")?;
            let gid = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid))
                .and_then(|f| f[3].parse::<u32>().ok())
                .unwrap_or(0);
            (uid, gid)
        }
        Err(_) => {
            let passwd = read("etc/passwd")?;
            let f = lookup(&passwd, u).ok_or_else(|| {
                user_err(user, format!("no user {u:?} in the image's /etc/passwd"))
            })?;
            let uid = f[2]
                .parse::<u32>()
                .map_err(|_| user_err(user, "bad uid in /etc/passwd"))?;
            let gid = f.get(3).and_then(|g| g.parse::<u32>().ok()).unwrap_or(0);
            (uid, gid)
        }
    };
    let gid = match g {
        None => primary_gid,
        Some("") => return Err(user_err(user, "the group part is empty")),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = read("etc/group")?;
                let f = lookup(&group, g).ok_or_else(|| {
                    user_err(user, format!("no group {g:?} in the image's /etc/group"))
                })?;
                f[2].parse::<u32>()
                    .map_err(|_| user_err(user, "bad gid in /etc/group"))?
            }
        },
    };
    Ok((uid, gid))
}
