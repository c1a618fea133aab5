//! The open-loop schedule of `bench --rate R`: when each request is due,
//! whatever the answers to earlier ones are doing.
//!
//! The fleet as a whole sends one request every 1/R s, the terminals taking
//! turns: request `k` of terminal `i` (of `n`) is due `(k·n + i) / R`
//! seconds after the start, so each terminal sends every n/R s with a phase
//! of i/R s. Times are computed from the slot number each time (integer
//! nanoseconds), never by adding periods, so they do not drift.
//!
//! A terminal still keeps at most `--pipeline` requests in flight. A slot
//! that comes while the pipeline is full is sent as soon as a place frees,
//! counted as a late send, and its latency still runs from the slot's time
//! (coordinated omission corrected): a slow answer shows up in the latency
//! of every request it held back, as it would at a real till queue.
use std::time::Duration;

/// Most requests per second `--rate` accepts, all terminals together
/// (twenty times the 50,000/s target; the pre-signed pool, at most
/// `MAX_POOL` requests for the whole window, is usually the tighter bound).
pub const MAX_RATE: u64 = 1_000_000;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// When one terminal's requests are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    index: u64,
    terminals: u64,
    rate: u64,
}

impl Schedule {
    /// The schedule of terminal `index` of `terminals`, at `rate` requests
    /// per second in all.
    pub fn new(index: u32, terminals: u32, rate: u64) -> Self {
        assert!(index < terminals, "terminal {index} of {terminals}");
        assert!((1..=MAX_RATE).contains(&rate), "rate {rate}");
        Schedule {
            index: u64::from(index),
            terminals: u64::from(terminals),
            rate,
        }
    }

    /// When slot `k` is due, after the start.
    pub fn at(&self, k: u64) -> Duration {
        let j = u128::from(k) * u128::from(self.terminals) + u128::from(self.index);
        let ns = j * NANOS_PER_SEC / u128::from(self.rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// How many slots are due strictly before `within` after the start.
    pub fn slots_before(&self, within: Duration) -> u64 {
        // Fleet-wide slot j is due at floor(j·1e9 / R) ns, which is below
        // the whole number W ns exactly when j < W·R / 1e9: there are
        // ceil(W·R / 1e9) such j, and this terminal has every n-th of them
        // from its index on.
        let fleet = (within.as_nanos() * u128::from(self.rate)).div_ceil(NANOS_PER_SEC);
        let fleet = u64::try_from(fleet).unwrap_or(u64::MAX);
        if fleet <= self.index {
            0
        } else {
            (fleet - self.index).div_ceil(self.terminals)
        }
    }

    /// How many slots are due at or before `now` after the start.
    pub fn slots_by(&self, now: Duration) -> u64 {
        self.slots_before(now + Duration::from_nanos(1))
    }
}

/// One terminal's way through its schedule: the next slot to send and the
/// late-send count.
#[derive(Debug, Clone)]
pub struct Pacer {
    schedule: Schedule,
    /// The next slot to send (slots are sent in order).
    next: u64,
    /// Slots below this one came due while the pipeline was full.
    held_before: u64,
    /// Slots sent late: they came due while the pipeline was full.
    late: u64,
}

impl Pacer {
    /// At the start: nothing sent.
    pub fn new(schedule: Schedule) -> Self {
        Pacer {
            schedule,
            next: 0,
            held_before: 0,
            late: 0,
        }
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// When the next unsent slot is due, after the start.
    pub fn next_at(&self) -> Duration {
        self.schedule.at(self.next)
    }

    /// Takes the next slot if it is due at `now` (after the start) and
    /// falls inside a window of length `end`: when it was due, and whether
    /// it is a late send (it came due while the pipeline was full). The
    /// caller has a free place in its pipeline.
    ///
    /// Once the window is over, a slot due inside it still goes if it came
    /// due with a free place (the timer only woke after the end), but not
    /// one that was held back: that one stays unsent.
    pub fn take(&mut self, now: Duration, end: Duration) -> Option<(Duration, bool)> {
        let at = self.next_at();
        let late = self.next < self.held_before;
        if at > now || at >= end || (now >= end && late) {
            return None;
        }
        if late {
            self.late += 1;
        }
        self.next += 1;
        Some((at, late))
    }

    /// The pipeline was full from the last send until `now`: every slot due
    /// by then and not yet sent was held back, and will be a late send.
    pub fn held_until(&mut self, now: Duration) {
        self.held_before = self.held_before.max(self.schedule.slots_by(now));
    }

    /// Late sends so far.
    pub fn late(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    /// A window long enough not to matter.
    const END: Duration = Duration::from_secs(3600);

    #[test]
    fn slots_are_spread_evenly_over_the_terminals() {
        // 4 terminals at 1,000/s: the fleet sends every 1 ms, terminal i
        // at i ms, i + 4 ms, i + 8 ms, ...
        let all: Vec<Schedule> = (0..4).map(|i| Schedule::new(i, 4, 1_000)).collect();
        assert_eq!(all[0].at(0), ms(0));
        assert_eq!(all[3].at(0), ms(3));
        assert_eq!(all[1].at(2), ms(9));
        let mut times: Vec<Duration> = all.iter().flat_map(|s| (0..250).map(|k| s.at(k))).collect();
        times.sort();
        let expected: Vec<Duration> = (0..1_000).map(ms).collect();
        assert_eq!(times, expected);
        // Within one second: 250 slots each, 1,000 in all.
        assert!(all.iter().all(|s| s.slots_before(ms(1_000)) == 250));
        // Slots before and at a time.
        assert_eq!(all[1].slots_before(ms(5)), 1); // 1 ms; 5 ms is not before 5 ms
        assert_eq!(all[1].slots_by(ms(5)), 2);
        assert_eq!(all[1].slots_by(ms(4)), 1);
        assert_eq!(all[1].slots_before(ms(0)), 0);
        assert_eq!(all[0].slots_by(ms(0)), 1);
    }

    #[test]
    fn uneven_splits_and_fractional_periods_add_up() {
        // 3 terminals at 1,000/s over 1 s: 334 + 333 + 333.
        let counts: Vec<u64> = (0..3)
            .map(|i| Schedule::new(i, 3, 1_000).slots_before(ms(1_000)))
            .collect();
        assert_eq!(counts, vec![334, 333, 333]);
        // 256 terminals at 10,000/s (~39 per terminal per second, every
        // 25.6 ms): exactly 10,000 per second, every slot inside [0, 1 s),
        // and no drift over a long window.
        let s: Vec<Schedule> = (0..256).map(|i| Schedule::new(i, 256, 10_000)).collect();
        let per_sec: u64 = s.iter().map(|s| s.slots_before(ms(1_000))).sum();
        assert_eq!(per_sec, 10_000);
        for t in &s {
            let n = t.slots_before(ms(1_000));
            assert!(t.at(n - 1) < ms(1_000) && t.at(n) >= ms(1_000));
        }
        assert_eq!(
            s[7].at(10_000 * 3600),
            Duration::from_micros(7 * 100) + ms(256 * 3_600_000)
        );
        // 7 per second from 3 terminals: slot j at floor(j / 7 s).
        let odd = Schedule::new(2, 3, 7);
        assert_eq!(odd.at(1), Duration::from_nanos(5 * 1_000_000_000 / 7));
        assert_eq!(
            (0..3)
                .map(|i| Schedule::new(i, 3, 7).slots_before(ms(2_000)))
                .sum::<u64>(),
            14
        );
        // Fewer requests than terminals: late terminals get none.
        assert_eq!(Schedule::new(9, 10, 5).slots_before(ms(1_000)), 0);
        assert_eq!(Schedule::new(4, 10, 5).slots_before(ms(1_000)), 1);
    }

    #[test]
    fn slots_held_back_by_a_full_pipeline_are_late() {
        // One terminal of one at 100/s: a slot every 10 ms.
        let mut p = Pacer::new(Schedule::new(0, 1, 100));
        assert_eq!(p.take(ms(0), END), Some((ms(0), false)));
        // Nothing due yet.
        assert_eq!(p.take(ms(9), END), None);
        assert_eq!(p.next_at(), ms(10));
        // The answer to slot 0 comes at 35 ms, with the pipeline (of one)
        // full since slot 0 went: slots 1, 2 and 3 (10, 20, 30 ms) waited.
        p.held_until(ms(35));
        assert_eq!(p.take(ms(35), END), Some((ms(10), true)));
        // Its answer comes at 36 ms: slot 2 was held too, and so on.
        p.held_until(ms(36));
        assert_eq!(p.take(ms(36), END), Some((ms(20), true)));
        p.held_until(ms(37));
        assert_eq!(p.take(ms(37), END), Some((ms(30), true)));
        // Caught up: slot 4 (40 ms) came with a free pipeline.
        p.held_until(ms(38));
        assert_eq!(p.take(ms(38), END), None);
        assert_eq!(p.take(ms(41), END), Some((ms(40), false)));
        assert_eq!(p.late(), 3);
        assert_eq!(p.next_at(), ms(50));
        // A slot sent a little after its time with the pipeline free (a
        // timer waking late) is not a late send.
        assert_eq!(p.take(ms(52), END), Some((ms(50), false)));
        assert_eq!(p.late(), 3);
        // Holding never marks slots already sent.
        p.held_until(ms(52));
        assert_eq!(p.take(ms(60), END), Some((ms(60), false)));
    }

    #[test]
    fn several_slots_due_at_once_are_taken_in_order() {
        // 2 terminals at 2,000/s: terminal 1 every 1 ms from 0.5 ms. A
        // timer that wakes at 3 ms finds three slots due; with room in the
        // pipeline they go at once, none late.
        let mut p = Pacer::new(Schedule::new(1, 2, 2_000));
        let due: Vec<_> = std::iter::from_fn(|| p.take(ms(3), END)).collect();
        assert_eq!(
            due,
            vec![
                (Duration::from_micros(500), false),
                (Duration::from_micros(1_500), false),
                (Duration::from_micros(2_500), false),
            ]
        );
        assert_eq!(p.next_at(), Duration::from_micros(3_500));
    }

    #[test]
    fn nothing_goes_from_after_the_window_and_nothing_held_after_it() {
        // A slot every 10 ms, a window of 50 ms: slots 0-4 are in it.
        let mut p = Pacer::new(Schedule::new(0, 1, 100));
        for k in 0..3 {
            assert_eq!(p.take(ms(10 * k), ms(50)), Some((ms(10 * k), false)));
        }
        // Slot 3 (30 ms) came due with a free place, but the timer woke
        // only after the end: it still goes.
        assert_eq!(p.take(ms(53), ms(50)), Some((ms(30), false)));
        // Slot 4 (40 ms) was held back by the pipeline until after the
        // end: it is never sent.
        p.held_until(ms(55));
        assert_eq!(p.take(ms(55), ms(50)), None);
        // Inside the window it would have gone, late.
        assert_eq!(p.take(ms(45), ms(60)), Some((ms(40), true)));
        // Slot 5 (50 ms) is not in a 50 ms window, whenever asked.
        assert_eq!(p.take(ms(58), ms(50)), None);
        assert_eq!(p.late(), 1);
    }
}
