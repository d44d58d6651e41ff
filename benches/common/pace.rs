//! The probers' schedule outside the agent (the floor, the blackbox driver): the agent's own,
//! a cycle every interval, the next one an interval after this one started, or at once if
//! this one overran. Shared so that every prober the bench compares keeps the same pace.

use std::time::{Duration, Instant};

/// Sleeps until the cycle after the one that started at `cycle_start`, and moves it there.
pub fn next_cycle(cycle_start: &mut Instant, interval: Duration) {
    *cycle_start += interval;
    let now = Instant::now();
    if *cycle_start > now {
        std::thread::sleep(*cycle_start - now);
    } else {
        *cycle_start = now;
    }
}
