//! Route sources: where the route set comes from, and when it is read again.
//!
//! Two sources: the routes file, and (feature `postgres`) the fleet database, read once per
//! probe cycle through `source_pg`.
//!
//! The routes file is checked once per probe cycle (by modification time, size and inode) and
//! on SIGHUP; an unchanged file is not read. A valid new file replaces the route set; an
//! invalid one keeps the old set, logs a warning and counts an error. The file is read whole
//! but never more than [`route::MAX_FILE_BYTES`].

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::route::{self, Route};

/// What the agent reads its routes from.
pub enum RouteSource {
    /// No source: nothing to probe.
    None,
    File(FileSource),
    #[cfg(feature = "postgres")]
    Pg(Box<crate::source_pg::PgSource>),
}

/// The result of a refresh.
pub enum Refresh {
    /// The source is unchanged (or not due): keep the current set.
    Unchanged,
    /// A new route set.
    Routes(Vec<Route>),
    /// The source works but does not know this VPS (or knows it twice): probe nothing. The
    /// message is for the log.
    NotRegistered(String),
    /// The source failed; keep the current set. The message is for the log.
    Failed(String),
}

impl RouteSource {
    /// Reads the source again: the file if it changed (or always, with `force`), the database
    /// every time (bounded: see `source_pg`). Returns the result and how long it blocked.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn refresh(&mut self, force: bool, now: Instant) -> (Refresh, Duration) {
        let started = Instant::now();
        let refresh = match self {
            RouteSource::None => Refresh::Unchanged,
            RouteSource::File(f) => f.refresh(force),
            #[cfg(feature = "postgres")]
            RouteSource::Pg(pg) => {
                use crate::source_pg::Fetch;
                match pg.fetch(now) {
                    Fetch::Routes(routes) => Refresh::Routes(routes),
                    Fetch::NotRegistered => Refresh::NotRegistered(format!(
                        "database {}: no vps row for host name '{}' (or it is retired/deleted): probing nothing, will look again next interval",
                        pg.describe(),
                        pg.hostname()
                    )),
                    Fetch::Ambiguous(ids) => Refresh::NotRegistered(format!(
                        "database {}: {} vps rows for host name '{}' ({}): probing nothing until one is left",
                        pg.describe(),
                        ids.len(),
                        pg.hostname(),
                        ids.join(", ")
                    )),
                    Fetch::Failed(message) => Refresh::Failed(format!("database {}: {message}", pg.describe())),
                    Fetch::Backoff => Refresh::Unchanged,
                }
            }
        };
        (refresh, started.elapsed())
    }
}

pub struct FileSource {
    pub path: PathBuf,
    /// (mtime ns, size, inode) of the last version read, valid or not.
    seen: Option<(i128, u64, u64)>,
}

impl FileSource {
    pub fn new(path: PathBuf) -> FileSource {
        FileSource { path, seen: None }
    }

    /// Reads the file if it changed since the last read (or always, with `force`).
    pub fn refresh(&mut self, force: bool) -> Refresh {
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                self.seen = None;
                return Refresh::Failed(format!(
                    "cannot read routes file {}: {e}",
                    self.path.display()
                ));
            }
        };
        let stamp = (
            meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            meta.len(),
            meta.ino(),
        );
        if !force && self.seen == Some(stamp) {
            return Refresh::Unchanged;
        }
        self.seen = Some(stamp);
        match self.read() {
            Ok(routes) => Refresh::Routes(routes),
            Err(e) => Refresh::Failed(e),
        }
    }

    fn read(&self) -> Result<Vec<Route>, String> {
        let path = self.path.display();
        let file = fs::File::open(&self.path)
            .map_err(|e| format!("cannot read routes file {path}: {e}"))?;
        let mut text = String::new();
        file.take(route::MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read routes file {path}: {e}"))?;
        if text.len() as u64 > route::MAX_FILE_BYTES {
            return Err(format!(
                "routes file {path} is larger than {} bytes (MAX_FILE_BYTES)",
                route::MAX_FILE_BYTES
            ));
        }
        route::parse_routes(&text).map_err(|e| format!("{path}:{}: {}", e.line, e.message))
    }
}
