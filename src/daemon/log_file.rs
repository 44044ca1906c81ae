//! A function's handler output on disk: `logs/<name>.log`, one JSON [`LogLine`] a line,
//! and one rotated generation `logs/<name>.log.1`. Each generation holds at most half of
//! `--log-max-mb`, so the two together never pass it whatever the handlers write (the
//! per-request bounds of `logs.rs` apply before a line gets here). Followers get each
//! new line through a bounded broadcast channel: a slow follower skips lines rather than
//! grow the daemon's memory.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::state_dir::FILE_MODE;
use crate::api::LogLine;

/// Lines a follower may be behind before it loses some.
const FOLLOW_BACKLOG: usize = 256;

pub struct FunctionLog {
    function: String,
    path: PathBuf,
    /// Bytes one generation may hold.
    generation_max: u64,
    /// None once the function is removed: late lines of its last requests are dropped.
    state: Mutex<Option<Open>>,
}

struct Open {
    /// Opened at the first line: a function that never logs (or a deploy that fails
    /// after this is made) leaves no file.
    file: Option<File>,
    size: u64,
    followers: broadcast::Sender<Arc<str>>,
}

/// What a reader gets: the kept lines, and (when asked) the lines logged after them.
pub struct Snapshot {
    pub kept: Kept,
    pub follow: Option<broadcast::Receiver<Arc<str>>>,
}

/// The kept lines at one instant, read without the log's lock: both generations opened
/// then, each read only up to its length then (a later rotation renames or unlinks the
/// paths, not the open files; later lines are past that length).
pub struct Kept {
    files: Vec<(File, u64)>,
    since_ms: u64,
}

impl Kept {
    /// Every kept line logged at or after `since_ms`, oldest first, read as it goes.
    pub fn lines(self) -> impl Iterator<Item = io::Result<LogLine>> {
        let since_ms = self.since_ms;
        self.files
            .into_iter()
            .flat_map(|(file, len)| BufReader::new(file.take(len)).lines())
            .filter_map(move |text| match text {
                // A line cut by a crash mid-write is skipped, not fatal.
                Ok(text) => serde_json::from_str::<LogLine>(&text)
                    .ok()
                    .filter(|l| l.ts_ms >= since_ms)
                    .map(Ok),
                Err(e) => Some(Err(e)),
            })
    }

    /// The last `n` of [`lines`](Self::lines): only that many are held while reading.
    pub fn tail(self, n: usize) -> io::Result<Vec<LogLine>> {
        let mut lines = VecDeque::new();
        for line in self.lines() {
            if lines.len() >= n {
                lines.pop_front();
            }
            if n > 0 {
                lines.push_back(line?);
            }
        }
        Ok(lines.into())
    }
}

impl FunctionLog {
    /// The log `dir/<name>.log`, appending to what an earlier run kept; the file is
    /// created (0600) with the first line.
    pub fn new(dir: &Path, name: &str, max_bytes: u64) -> Self {
        let path = dir.join(format!("{name}.log"));
        let size = fs::metadata(&path).map_or(0, |m| m.len());
        FunctionLog {
            function: name.to_string(),
            path,
            generation_max: max_bytes / 2,
            state: Mutex::new(Some(Open {
                file: None,
                size,
                followers: broadcast::channel(FOLLOW_BACKLOG).0,
            })),
        }
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    fn rotated(&self) -> PathBuf {
        self.path.with_extension("log.1")
    }

    /// Appends `line` (rotating first when it would not fit) and hands it to followers.
    pub fn append(&self, line: &LogLine) {
        let mut json = serde_json::to_string(line).expect("a LogLine always serializes");
        json.push('\n');
        let mut state = self.state.lock().unwrap();
        let Some(open) = state.as_mut() else { return };
        if open.size + json.len() as u64 > self.generation_max && open.size > 0 {
            if let Err(e) = self.rotate(open) {
                tracing::error!(log = %self.path.display(), "rotating a function's log failed: {e}");
                return;
            }
        }
        let written = match &mut open.file {
            Some(file) => file.write_all(json.as_bytes()),
            None => open_append(&self.path).and_then(|mut file| {
                let written = file.write_all(json.as_bytes());
                open.file = Some(file);
                written
            }),
        };
        match written {
            Ok(()) => open.size += json.len() as u64,
            Err(e) => {
                tracing::error!(log = %self.path.display(), "writing a function's log failed: {e}")
            }
        }
        // No follower is not an error.
        let _ = open.followers.send(Arc::from(json.trim_end()));
    }

    fn rotate(&self, open: &mut Open) -> io::Result<()> {
        fs::rename(&self.path, self.rotated())?;
        open.file = Some(open_append(&self.path)?);
        open.size = 0;
        Ok(())
    }

    /// The kept lines logged at or after `since_ms`; with `follow`, a receiver of every
    /// line logged after them (taken under the same lock, so none is missed or repeated).
    /// Blocking, but short: it opens the files, the reading is the caller's.
    pub fn read(&self, since_ms: u64, follow: bool) -> io::Result<Snapshot> {
        let state = self.state.lock().unwrap();
        let mut files = Vec::new();
        for path in [self.rotated(), self.path.clone()] {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // Appends happen under the lock held here: this is every whole line so far.
            let len = file.metadata()?.len();
            files.push((file, len));
        }
        let follow = state
            .as_ref()
            .filter(|_| follow)
            .map(|o| o.followers.subscribe());
        Ok(Snapshot {
            kept: Kept { files, since_ms },
            follow,
        })
    }

    /// Ends every follower and deletes both generations (`faas rm`).
    pub fn remove(&self) {
        // Dropping the sender closes every follower's receiver.
        self.state.lock().unwrap().take();
        for path in [self.path.clone(), self.rotated()] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(log = %path.display(), "removing a function's log failed: {e}");
                }
            }
        }
    }
}

/// Removes the logs (`<name>.log`, `<name>.log.1`) in `dir` of functions for which
/// `deployed` is false: what a crash between an undeploy's registry change and its log
/// removal left. Returns how many files went.
pub fn sweep(dir: &Path, deployed: impl Fn(&str) -> bool) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Function names have no '.': the name is what comes before ".log".
        let name = file
            .strip_suffix(".log.1")
            .or_else(|| file.strip_suffix(".log"));
        if name.is_some_and(|n| !deployed(n)) {
            fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LogStream;

    fn line(ts_ms: u64, text: &str) -> LogLine {
        LogLine {
            ts_ms,
            request: "r1".into(),
            stream: LogStream::Stdout,
            text: text.into(),
            cut: false,
        }
    }

    #[test]
    fn keeps_two_generations_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = FunctionLog::new(dir.path(), "f", 4096);
        for i in 0..500 {
            log.append(&line(i, &format!("line {i}")));
        }
        let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
        let total = size(&log.path) + size(&log.rotated());
        assert!(total <= 4096, "{total} bytes kept");
        let kept: Vec<LogLine> = log
            .read(0, false)
            .unwrap()
            .kept
            .lines()
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(kept.last().unwrap().text, "line 499", "newest kept");
        assert!(
            kept.windows(2).all(|w| w[0].ts_ms + 1 == w[1].ts_ms),
            "in order, no gap"
        );
        // Rotations after a snapshot (its files renamed, then unlinked) do not touch it.
        let snap = log.read(0, false).unwrap();
        for i in 500..1000 {
            log.append(&line(i, &format!("line {i}")));
        }
        let read: Vec<LogLine> = snap.kept.lines().collect::<io::Result<_>>().unwrap();
        assert_eq!(read, kept);
    }

    #[test]
    fn sweep_removes_only_logs_of_functions_not_deployed() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "kept.log",
            "kept.log.1",
            "gone.log",
            "gone.log.1",
            "other.txt",
        ] {
            fs::write(dir.path().join(f), "x").unwrap();
        }
        assert_eq!(sweep(dir.path(), |n| n == "kept").unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["kept.log", "kept.log.1", "other.txt"]);
    }

    #[test]
    fn since_tail_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let log = FunctionLog::new(dir.path(), "f", 1 << 20);
        for i in 0..10 {
            log.append(&line(i * 1000, &i.to_string()));
        }
        let texts = |l: Vec<LogLine>| l.into_iter().map(|l| l.text).collect::<Vec<_>>();
        let all = |s: Snapshot| s.kept.lines().collect::<io::Result<Vec<_>>>().unwrap();
        assert_eq!(texts(all(log.read(7000, false).unwrap())), ["7", "8", "9"]);
        let tail = log.read(0, false).unwrap().kept.tail(2).unwrap();
        assert_eq!(texts(tail), ["8", "9"]);
        assert!(log.read(0, false).unwrap().kept.tail(0).unwrap().is_empty());
        // A snapshot is what was kept when it was taken, whatever is written after.
        let snap = log.read(0, false).unwrap();
        log.append(&line(9500, "after"));
        assert_eq!(all(snap).len(), 10);
        let mut rx = log.read(0, true).unwrap().follow.unwrap();
        log.append(&line(10_000, "new"));
        assert!(rx.try_recv().unwrap().contains("\"new\""));
        log.remove();
        assert!(matches!(
            rx.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        assert!(!log.path.exists());
        log.append(&line(11_000, "late"));
        assert!(!log.path.exists(), "no line recreates a removed log");
    }
}
