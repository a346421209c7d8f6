//! Timing decisions without timers: a jittered, capped exponential backoff (API errors, 409
//! retries) and the heal governor that keeps annotation self-healing fast when it is rare and
//! slow when another writer keeps undoing us (never a hot loop). The caller sleeps.

use std::time::{Duration, Instant};

use rand::Rng;

/// Capped exponential backoff with "equal jitter": each delay is uniformly drawn from
/// `[d/2, d]` where `d` doubles from `initial` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt; grows the following one.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let spread = u64::try_from((d - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.random_range(0..=spread))
    }

    /// Back to `initial` after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Paces re-assertion of our node annotations.
#[derive(Debug, Clone)]
pub struct HealGovernor {
    backoff: Backoff,
    /// Heals further apart than this count as unrelated (immediate heal).
    quiet: Duration,
    last_heal: Option<Instant>,
    streak: u32,
}

impl HealGovernor {
    pub fn new(initial: Duration, max: Duration, quiet: Duration) -> HealGovernor {
        HealGovernor {
            backoff: Backoff::new(initial, max),
            quiet,
            last_heal: None,
            streak: 0,
        }
    }

    /// Upstream-friendly defaults: 1 s doubling to 5 min; heals 10 min apart are unrelated.
    pub fn standard() -> HealGovernor {
        HealGovernor::new(
            Duration::from_secs(1),
            Duration::from_secs(300),
            Duration::from_secs(600),
        )
    }

    /// A heal is needed at `now`: how long to wait before patching. Zero for an isolated
    /// clobber; growing delays while clobbers keep coming within the quiet period.
    pub fn delay_for_heal<R: Rng + ?Sized>(&mut self, now: Instant, rng: &mut R) -> Duration {
        let fighting = self
            .last_heal
            .is_some_and(|t| now.saturating_duration_since(t) < self.quiet);
        self.last_heal = Some(now);
        if !fighting {
            self.backoff.reset();
            self.streak = 1;
            return Duration::ZERO;
        }
        self.streak += 1;
        self.backoff.next_delay(rng)
    }

    /// Consecutive heals within the quiet period; ≥ 3 means someone keeps undoing us (log loudly).
    pub fn streak(&self) -> u32 {
        self.streak
    }

    pub fn is_fighting(&self) -> bool {
        self.streak >= 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut nominal = Duration::from_millis(100);
        for _ in 0..12 {
            let d = b.next_delay(&mut rng);
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominal = (nominal * 2).min(Duration::from_secs(5));
        }
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
        // jitter really varies
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let set: std::collections::HashSet<_> = (0..20).map(|_| b.next_delay(&mut rng)).collect();
        assert!(set.len() > 15);
    }

    #[test]
    fn isolated_clobbers_heal_immediately() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let mut g = HealGovernor::standard();
        let t0 = Instant::now();
        assert_eq!(g.delay_for_heal(t0, &mut rng), Duration::ZERO);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(g.delay_for_heal(later, &mut rng), Duration::ZERO);
        assert_eq!(g.streak(), 1);
        assert!(!g.is_fighting());
    }

    #[test]
    fn a_persistent_writer_meets_growing_delays() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut g = HealGovernor::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..10 {
            let d = g.delay_for_heal(now, &mut rng);
            delays.push(d);
            now += d + Duration::from_millis(10);
        }
        assert_eq!(delays[0], Duration::ZERO);
        assert!(delays[1] >= Duration::from_millis(500));
        assert!(delays[9] >= Duration::from_secs(30) && delays[9] <= Duration::from_secs(60));
        assert!(
            delays.windows(2).skip(1).all(|w| w[1] * 2 >= w[0]),
            "{delays:?}"
        );
        assert!(g.is_fighting());
        assert_eq!(g.streak(), 10);
    }
}
