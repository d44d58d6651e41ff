//! Route sources: where the route set comes from, and when it is read again.
//!
//! Two sources: the routes file, read at once when asked, and (feature `postgres`) the fleet
//! database, fetched once per probe cycle by `source_pg`'s state machine on the event loop.
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

use mio::{Registry, Token};

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
    /// Reads the source again: the file if it changed (or always, with `force`), at once; the
    /// database every time, as a fetch on the loop. `Some` is the result and how long the read
    /// took; `None` means a fetch is under way and its result comes from
    /// [`RouteSource::on_event`] or [`RouteSource::on_deadline`].
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn begin(
        &mut self,
        force: bool,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Option<(Refresh, Duration)> {
        match self {
            RouteSource::None => Some((Refresh::Unchanged, Duration::ZERO)),
            RouteSource::File(f) => {
                let started = Instant::now();
                let refresh = f.refresh(force);
                Some((refresh, started.elapsed()))
            }
            #[cfg(feature = "postgres")]
            RouteSource::Pg(pg) => {
                let fetch = pg.begin(now, registry, tokens)?;
                Some(pg_refresh(pg, fetch))
            }
        }
    }

    /// An event for one of the source's tokens (see [`RouteSource::owns`]).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn on_event(
        &mut self,
        token: Token,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Option<(Refresh, Duration)> {
        match self {
            #[cfg(feature = "postgres")]
            RouteSource::Pg(pg) => {
                let fetch = pg.on_event(token, now, registry, tokens)?;
                Some(pg_refresh(pg, fetch))
            }
            _ => None,
        }
    }

    /// [`RouteSource::next_deadline`] passed.
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn on_deadline(
        &mut self,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Option<(Refresh, Duration)> {
        match self {
            #[cfg(feature = "postgres")]
            RouteSource::Pg(pg) => {
                let fetch = pg.on_deadline(now, registry, tokens)?;
                Some(pg_refresh(pg, fetch))
            }
            _ => None,
        }
    }

    /// Whether `token` belongs to the source (the database's socket or name lookup).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub fn owns(&self, token: Token) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            RouteSource::Pg(pg) => pg.owns(token),
            _ => false,
        }
    }

    /// When [`RouteSource::on_deadline`] must be called at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            #[cfg(feature = "postgres")]
            RouteSource::Pg(pg) => pg.next_deadline(),
            _ => None,
        }
    }
}

/// A fetch's result in the terms of every source, with how long it took.
#[cfg(feature = "postgres")]
fn pg_refresh(
    pg: &crate::source_pg::PgSource,
    fetch: crate::source_pg::Fetch,
) -> (Refresh, Duration) {
    use crate::source_pg::Fetch;
    let took = pg.last_fetch_duration().unwrap_or_default();
    let refresh = match fetch {
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
        Fetch::Backoff => return (Refresh::Unchanged, Duration::ZERO),
    };
    (refresh, took)
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
