//! The time a run spends not training — the kNN monitor and gauges, previews, checkpoints — and
//! the rule that keeps it within a share of the run's wall-clock time.
//!
//! Watching must not cost learning: on a small folder an epoch is a few seconds, and measuring
//! every stage, drawing previews and writing checkpoints after each one took a third of the
//! time. So these happen when they are due *and* the budget allows, judged by time, not by
//! epoch: each kind of work has its share of the budget (the monitor 3/5, previews and
//! checkpoints 1/5 each), and runs only if what it has spent so far plus what it cost last time
//! stays within its share of the wall-clock time, with room kept for the last one, and — so that
//! a budget saved up is not spent in a burst — not sooner after the last one than its cost
//! takes to earn at that share. The
//! measurements a run's report needs — at the start (the random-init reference) and at the
//! end — and the ones a person asks for ("Measure now", a checkpoint) are always made, and
//! counted.

use serde::Serialize;

/// A kind of work that is not training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// kNN accuracy per stage and the gauges.
    Monitor,
    /// Live previews and the preview PNGs.
    Previews,
    /// Epoch and resume checkpoints.
    Checkpoints,
}

impl Activity {
    /// This kind's share of the budget.
    pub fn share(self) -> f64 {
        match self {
            Self::Monitor => 0.6,
            Self::Previews | Self::Checkpoints => 0.2,
        }
    }

    /// What it is expected to cost before it was ever done (on the generous side: a few times
    /// what it takes at 32 px on two cores).
    fn first_guess_s(self) -> f64 {
        match self {
            Self::Monitor => 2.0,
            Self::Previews | Self::Checkpoints => 0.2,
        }
    }
}

/// Time spent on one kind of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spent {
    /// Seconds in all.
    pub secs: f64,
    /// How many times it was done.
    pub count: u32,
    /// Seconds the last one took (the estimate for the next).
    pub last_s: f64,
    /// The run's wall-clock second when the last one ended.
    pub last_at: f64,
}

/// Everything a run spent not training, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Overhead {
    pub monitor: Spent,
    pub previews: Spent,
    pub checkpoints: Spent,
    /// The part of the total that was not up to the budget: the start and end measurements and
    /// what a person asked for.
    pub forced_s: f64,
    /// Wall-clock seconds of the run so far (training and overhead; loading and pauses
    /// excluded).
    pub wall_s: f64,
}

impl Overhead {
    fn get(&self, what: Activity) -> &Spent {
        match what {
            Activity::Monitor => &self.monitor,
            Activity::Previews => &self.previews,
            Activity::Checkpoints => &self.checkpoints,
        }
    }

    fn get_mut(&mut self, what: Activity) -> &mut Spent {
        match what {
            Activity::Monitor => &mut self.monitor,
            Activity::Previews => &mut self.previews,
            Activity::Checkpoints => &mut self.checkpoints,
        }
    }

    /// Seconds spent not training, in all.
    pub fn total_s(&self) -> f64 {
        self.monitor.secs + self.previews.secs + self.checkpoints.secs
    }

    /// The share of the wall-clock time spent not training (0–1; 0 before any time passed).
    pub fn fraction(&self) -> f64 {
        if self.wall_s > 0.0 {
            (self.total_s() / self.wall_s).min(1.0)
        } else {
            0.0
        }
    }

    /// Whether `what` may run now within `budget` (a fraction of the wall-clock time `wall_s`;
    /// 1 or more: always). Judged by what it cost the last time (a generous guess before the
    /// first time).
    pub fn allows(&self, what: Activity, budget: f64, wall_s: f64) -> bool {
        self.allowed_from(what, budget)
            .is_none_or(|from| wall_s >= from)
    }

    /// What `what` is expected to cost: what it cost the last time (a generous guess before
    /// the first time).
    fn expected(&self, what: Activity) -> f64 {
        let spent = self.get(what);
        if spent.count == 0 {
            what.first_guess_s()
        } else {
            spent.last_s
        }
    }

    /// The wall-clock second of the run from which [`Overhead::allows`] lets `what` run again,
    /// as things stand; `None` when the budget allows everything (1 or more).
    pub fn allowed_from(&self, what: Activity, budget: f64) -> Option<f64> {
        if budget >= 1.0 {
            return None;
        }
        let spent = self.get(what);
        let expected = self.expected(what);
        let share = what.share() * budget.max(f64::MIN_POSITIVE);
        // Within the share once spent + 2 × expected ≤ share × (wall + expected): room is kept
        // for one more, as the end of the run measures, previews and saves anyway.
        let within = (spent.secs + 2.0 * expected) / share - expected;
        // Paced: no sooner than the time the last one's cost takes to earn at this share.
        let paced = if spent.count == 0 {
            0.0
        } else {
            spent.last_at + expected / share
        };
        Some(within.max(paced).max(0.0))
    }

    /// Counts `secs` spent on `what`, ending at the run's wall-clock second `at`; `forced` when
    /// the budget was not asked.
    pub fn add(&mut self, what: Activity, secs: f64, forced: bool, at: f64) {
        let s = self.get_mut(what);
        s.secs += secs;
        s.count += 1;
        s.last_s = secs;
        s.last_at = at;
        if forced {
            self.forced_s += secs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `steps` steps of `step_s` each, asking after every step for each activity
    /// (costing `costs`), the first and last ones forced; returns the overhead.
    fn simulate(steps: usize, step_s: f64, costs: [(Activity, f64); 3], budget: f64) -> Overhead {
        let mut o = Overhead::default();
        let mut wall = 0.0;
        for i in 0..steps {
            wall += step_s;
            for (what, cost) in costs {
                let forced = i == 0 || i + 1 == steps;
                if forced || o.allows(what, budget, wall) {
                    wall += cost;
                    o.add(what, cost, forced, wall);
                }
            }
        }
        o.wall_s = wall;
        o
    }

    #[test]
    fn what_is_up_to_the_budget_stays_within_it_whatever_the_costs() {
        let costs = [
            (Activity::Monitor, 1.5),
            (Activity::Previews, 0.05),
            (Activity::Checkpoints, 0.1),
        ];
        for (steps, step_s) in [(50, 0.4), (500, 0.4), (5000, 0.02), (200, 3.0)] {
            let o = simulate(steps, step_s, costs, 0.05);
            let budgeted = o.total_s() - o.forced_s;
            assert!(
                budgeted <= 0.05 * o.wall_s + 1e-9,
                "{steps} steps of {step_s} s: {budgeted} s of {} s",
                o.wall_s
            );
            // Once the start's measurement is paid for, the whole overhead (the end's forced
            // measurement included) stays within the budget.
            if o.wall_s > 90.0 {
                assert!(o.fraction() <= 0.05, "{o:?}");
            }
        }
    }

    #[test]
    fn cheap_work_is_not_starved_by_expensive_work() {
        let o = simulate(
            2000,
            0.4,
            [
                (Activity::Monitor, 5.0),
                (Activity::Previews, 0.01),
                (Activity::Checkpoints, 0.02),
            ],
            0.05,
        );
        assert!(o.previews.count > 100, "{o:?}");
        assert!(o.checkpoints.count > 100, "{o:?}");
        assert!(o.monitor.count >= 3, "{o:?}");
    }

    /// What a window tells a person ("next measurement in about …") agrees with the rule.
    #[test]
    fn allowed_from_is_the_first_second_the_rule_allows() {
        let mut o = Overhead::default();
        for (cost, forced, at) in [(0.7, true, 1.0), (0.9, false, 120.0), (0.4, false, 150.0)] {
            for what in [Activity::Monitor, Activity::Previews] {
                for budget in [0.005, 0.05, 0.3] {
                    let from = o.allowed_from(what, budget).unwrap();
                    assert!(o.allows(what, budget, from + 1e-6), "{o:?} {budget}");
                    if from > 1e-3 {
                        assert!(!o.allows(what, budget, from - 1e-3), "{o:?} {budget}");
                    }
                }
            }
            o.add(Activity::Monitor, cost, forced, at);
        }
        // 0.7 + 0.9 + 0.4 s measured, 0.4 s expected next: within the budget from 2.8 s / 3%
        // − 0.4 s = 92.9 s, but paced: 0.4 s / 3% = 13.3 s after the last, at 150 s.
        let from = o.allowed_from(Activity::Monitor, 0.05).unwrap();
        assert!((from - (150.0 + 0.4 / 0.03)).abs() < 1e-9, "{from}");
        assert_eq!(o.allowed_from(Activity::Monitor, 1.0), None);
    }

    /// A budget saved up (the start's measurement cost more than the later ones) is spent
    /// evenly, not in a burst of measurements one step apart.
    #[test]
    fn a_saved_up_budget_is_not_spent_in_a_burst() {
        let mut o = Overhead::default();
        let mut wall = 0.0;
        o.add(Activity::Monitor, 1.0, true, 1.0);
        let mut times = Vec::new();
        while wall < 300.0 {
            wall += 0.1;
            if o.allows(Activity::Monitor, 0.05, wall) {
                wall += 0.4;
                o.add(Activity::Monitor, 0.4, false, wall);
                times.push(wall);
            }
        }
        assert!(times.len() >= 5, "{times:?}");
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= 0.4 / 0.03 - 0.2, "a burst: {times:?}");
        }
    }

    #[test]
    fn a_budget_of_one_allows_everything() {
        let o = simulate(
            100,
            0.01,
            [
                (Activity::Monitor, 1.0),
                (Activity::Previews, 1.0),
                (Activity::Checkpoints, 1.0),
            ],
            1.0,
        );
        assert_eq!(o.monitor.count, 100);
        assert!(o.fraction() > 0.9);
    }
}
