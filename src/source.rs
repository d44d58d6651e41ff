//! Route sources: where the route set comes from, and when it is read again.
//!
//! Two sources: the routes file, read at once when asked, and (feature `postgres`) the fleet
//! database, fetched once per probe cycle by `source_pg`'s state machine on the event loop.
//!
//! The routes file is checked once per probe cycle (by modification time, size and inode) and
//! on SIGHUP; an unchanged file is not read. A changed file is read only once it has settled
//! ([`FILE_SETTLE_TIME`]), so a file being rewritten in place is not applied empty or half
//! written; SIGHUP reads it at once. A valid new file replaces the route set; an invalid one
//! keeps the old set, logs a warning and counts an error, and is not read again until it
//! changes. A file that cannot be read (permissions, I/O) is tried again every cycle, since
//! fixing it (`chmod`) changes none of what is compared. The file is read whole but never more
//! than [`route::MAX_FILE_BYTES`].

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

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
                let refresh = f.refresh(force, now, SystemTime::now());
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

/// A changed routes file is read once it has settled: not modified for this long (its mtime),
/// or seen unchanged on two checks this far apart (for an mtime in the future). A writer that
/// truncates the file and rewrites it in place would otherwise get an empty or half-written
/// file applied: routes gone, counters reset. 2 s is far longer than writing the largest
/// allowed file takes, and short beside any probe interval; a slower writer must write
/// elsewhere and rename (atomic, and the safe way in any case).
pub const FILE_SETTLE_TIME: Duration = Duration::from_secs(2);

/// (mtime ns, size, inode): what tells one version of the file from another.
type Stamp = (i128, u64, u64);

fn stamp(meta: &fs::Metadata) -> Stamp {
    (
        meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        meta.len(),
        meta.ino(),
    )
}

/// Why a read gave no route set.
enum ReadError {
    /// The file could not be opened or read: try again next cycle.
    Io(String),
    /// It changed while being read: let it settle again.
    Changed,
    /// Its content is invalid: not read again until it changes.
    Invalid(String),
}

pub struct FileSource {
    pub path: PathBuf,
    /// The last version read whole, valid or not (one that failed to read is not kept, so
    /// it is tried again).
    seen: Option<Stamp>,
    /// A changed version waiting to settle, and when it was first seen.
    settling: Option<(Stamp, Instant)>,
}

impl FileSource {
    pub fn new(path: PathBuf) -> FileSource {
        FileSource {
            path,
            seen: None,
            settling: None,
        }
    }

    /// Reads the file if it changed since the last read and has settled (or always, with
    /// `force`). `now` and `wall` are the monotonic and wall clocks of this check.
    pub fn refresh(&mut self, force: bool, now: Instant, wall: SystemTime) -> Refresh {
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                self.seen = None;
                self.settling = None;
                return Refresh::Failed(format!(
                    "cannot read routes file {}: {e}",
                    self.path.display()
                ));
            }
        };
        let stamp = stamp(&meta);
        if !force && self.seen == Some(stamp) {
            self.settling = None;
            return Refresh::Unchanged;
        }
        let modified = meta.modified().unwrap_or(wall);
        if !force && !self.settled(stamp, modified, now, wall) {
            log::debug!(
                "routes file {} changed; reading it once it has settled",
                self.path.display()
            );
            return Refresh::Unchanged;
        }
        match self.read(stamp, force) {
            Ok(routes) => {
                self.seen = Some(stamp);
                self.settling = None;
                Refresh::Routes(routes)
            }
            Err(ReadError::Io(message)) => Refresh::Failed(message),
            Err(ReadError::Changed) => {
                self.settling = None;
                Refresh::Unchanged
            }
            Err(ReadError::Invalid(message)) => {
                self.seen = Some(stamp);
                self.settling = None;
                Refresh::Failed(message)
            }
        }
    }

    /// Whether version `stamp`, modified at `modified`, has settled by `now`/`wall`.
    fn settled(
        &mut self,
        stamp: Stamp,
        modified: SystemTime,
        now: Instant,
        wall: SystemTime,
    ) -> bool {
        if wall
            .duration_since(modified)
            .is_ok_and(|age| age >= FILE_SETTLE_TIME)
        {
            return true;
        }
        match self.settling {
            Some((s, since)) if s == stamp => {
                now.saturating_duration_since(since) >= FILE_SETTLE_TIME
            }
            _ => {
                self.settling = Some((stamp, now));
                false
            }
        }
    }

    /// Reads and parses version `stamp`. Unless `force`d, a file that is not that version when
    /// opened, or changes while read, is `Changed`.
    fn read(&self, stamp_seen: Stamp, force: bool) -> Result<Vec<Route>, ReadError> {
        let path = self.path.display();
        let io = |e: std::io::Error| ReadError::Io(format!("cannot read routes file {path}: {e}"));
        let mut file = fs::File::open(&self.path).map_err(io)?;
        let same = |file: &fs::File| file.metadata().is_ok_and(|m| stamp(&m) == stamp_seen);
        if !force && !same(&file) {
            return Err(ReadError::Changed);
        }
        let mut bytes = Vec::new();
        (&mut file)
            .take(route::MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if !force && !same(&file) {
            return Err(ReadError::Changed);
        }
        if bytes.len() as u64 > route::MAX_FILE_BYTES {
            return Err(ReadError::Invalid(format!(
                "routes file {path} is larger than {} bytes (MAX_FILE_BYTES)",
                route::MAX_FILE_BYTES
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            ReadError::Invalid(format!("routes file {path} is not UTF-8 text: {e}"))
        })?;
        route::parse_routes(&text)
            .map_err(|e| ReadError::Invalid(format!("{path}:{}: {}", e.line, e.message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settling rule with made-up clocks: a change is read once its mtime is
    /// `FILE_SETTLE_TIME` old, or once the same version was seen that long ago; a read that
    /// fails is tried again at the next check; `force` reads at once.
    #[test]
    fn changed_file_is_read_once_settled() {
        let dir = std::env::temp_dir().join(format!("sigma-source-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes");
        fs::write(&path, "n r 1 127.0.0.1:1\n").unwrap();
        let mut f = FileSource::new(path.clone());
        let t0 = Instant::now();
        let wall = SystemTime::now();
        assert!(matches!(f.refresh(true, t0, wall), Refresh::Routes(r) if r.len() == 1));
        assert!(matches!(f.refresh(false, t0, wall), Refresh::Unchanged));

        fs::write(&path, "n r 1 127.0.0.1:1\nn s 2 127.0.0.1:2\n").unwrap();
        let wall = SystemTime::now();
        // Just written: not read yet, at this check nor one a second later.
        assert!(matches!(f.refresh(false, t0, wall), Refresh::Unchanged));
        let t1 = t0 + Duration::from_secs(1);
        let w1 = wall + Duration::from_secs(1);
        assert!(matches!(f.refresh(false, t1, w1), Refresh::Unchanged));
        // Its mtime is FILE_SETTLE_TIME old: read.
        let w2 = wall + FILE_SETTLE_TIME;
        assert!(matches!(f.refresh(false, t1, w2), Refresh::Routes(r) if r.len() == 2));

        // An mtime in the future (clock skew): the same version on two checks 2 s apart.
        fs::write(&path, "n r 1 127.0.0.1:1\n").unwrap();
        let past = SystemTime::now() - Duration::from_secs(3600);
        assert!(matches!(f.refresh(false, t1, past), Refresh::Unchanged));
        let t3 = t1 + FILE_SETTLE_TIME;
        assert!(matches!(f.refresh(false, t3, past), Refresh::Routes(r) if r.len() == 1));

        // Gone: failed, and read again (forced or settled) once back.
        fs::remove_file(&path).unwrap();
        assert!(matches!(f.refresh(false, t3, past), Refresh::Failed(_)));
        fs::write(&path, "n r 1 127.0.0.1:1\n").unwrap();
        assert!(matches!(f.refresh(true, t3, past), Refresh::Routes(_)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
