//! The floor of the benchmark: the least a single-threaded mio program can do to probe the
//! same targets the agent probes — sequential non-blocking TCP connects, one at a time, a
//! cycle every interval, the same deadline and the same connect recipe (register WRITABLE,
//! `take_error`, `peer_addr`), and nothing else: no snapshot, no metrics, no HTTP, no logs.
//! What it costs per connect is what the kernel costs; `make bench` (benches/benchkit) compares
//! the agent's CPU per probe with it.
//!
//! Usage: `floor ROUTES_FILE [INTERVAL_SECS [DEADLINE_SECS [DURATION_SECS]]]` (defaults 1, 3,
//! 600). Targets are the 4th field of each line of a routes file (IP literals only; names are
//! skipped). It stops by itself after DURATION_SECS, or on SIGTERM. Benchmarks point it only
//! at loopback.

#[path = "common/pace.rs"]
mod pace;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use pace::next_cycle;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: floor ROUTES_FILE [INTERVAL_SECS [DEADLINE_SECS [DURATION_SECS]]]");
        std::process::exit(2);
    };
    let secs = |i: usize, default: f64| {
        Duration::from_secs_f64(args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default))
    };
    let (interval, deadline, duration) = (secs(2, 1.0), secs(3, 3.0), secs(4, 600.0));
    let targets: Vec<SocketAddr> = std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| l.split('#').next()?.split_whitespace().nth(3)?.parse().ok())
        .collect();

    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(16);
    let stop_at = Instant::now() + duration;
    let mut next_token = 0;
    let mut probes: u64 = 0;
    let mut cycle_start = Instant::now();
    while cycle_start < stop_at {
        for &target in &targets {
            probes += 1;
            let Ok(mut stream) = TcpStream::connect(target) else {
                continue; // failed at once: an outcome, the probe is over
            };
            next_token += 1;
            let token = Token(next_token);
            poll.registry()
                .register(&mut stream, token, Interest::WRITABLE)?;
            let probe_deadline = Instant::now() + deadline;
            'probe: loop {
                let now = Instant::now();
                if now >= probe_deadline {
                    break; // timeout
                }
                match poll.poll(&mut events, Some(probe_deadline - now)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                for event in events.iter() {
                    if event.token() != token {
                        continue;
                    }
                    match stream.take_error() {
                        Ok(Some(_)) | Err(_) => break 'probe, // failed
                        Ok(None) => {}
                    }
                    match stream.peer_addr() {
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {} // spurious
                        _ => break 'probe, // connected (or failed)
                    }
                }
            }
            poll.registry().deregister(&mut stream)?;
        }
        next_cycle(&mut cycle_start, interval);
    }
    eprintln!("floor: {probes} probes, stopping after {duration:?}");
    Ok(())
}
