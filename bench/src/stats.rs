//! How rounds become results: medians, and native and portcullis measured in
//! alternating pairs so that each ratio compares runs that saw the same
//! machine speed.

use std::net::SocketAddr;

use crate::report::{Row, row};
use crate::servers::{Target, cpu_seconds};

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[mid - 1] + values[mid]) / 2.0 } else { values[mid] }
}

/// What [`alternate`] found for each value a measurement yields: the medians
/// of native's and portcullis's rounds, and the medians of the per-round
/// ratios and differences.
pub struct Paired {
    native: Vec<f64>,
    ours: Vec<f64>,
    /// `None` when native measured 0 in every round.
    ratio: Vec<Option<f64>>,
    /// The lowest and highest per-round ratio.
    ratio_range: Vec<Option<(f64, f64)>>,
    difference: Vec<f64>,
}

impl Paired {
    /// The table row of value `i`.
    pub fn row(&self, scenario: &str, mode: &str, metric: &str, i: usize) -> Row {
        self.scaled_row(scenario, mode, metric, i, 1.0)
    }

    /// The server's CPU time per unit of work (µs per `unit`: `msg`, `req`,
    /// `conn`...), which [`alternate`] appends to every round's values.
    pub fn cpu_row(&self, scenario: &str, mode: &str, unit: &str) -> Row {
        self.row(scenario, mode, &format!("server CPU µs/{unit}"), self.ours.len() - 1)
    }

    /// How far above native value `i` is (for targets stated as a difference).
    pub fn difference_row(&self, scenario: &str, mode: &str, metric: &str, i: usize) -> Row {
        row(scenario, mode, metric, self.difference[i], None)
    }

    /// The row of value `i` in another unit (`scale` times it; same ratio).
    pub fn scaled_row(&self, scenario: &str, mode: &str, metric: &str, i: usize, scale: f64) -> Row {
        Row {
            scenario: scenario.into(),
            mode: mode.into(),
            metric: metric.into(),
            portcullis: self.ours[i] * scale,
            native: Some(self.native[i] * scale),
            ratio: self.ratio[i],
            ratio_min: self.ratio_range[i].map(|(low, _)| low),
            ratio_max: self.ratio_range[i].map(|(_, high)| high),
        }
    }
}

/// Runs `measure` against native and portcullis `rounds` times each, in pairs
/// that alternate which goes first (N P, P N, N P, ...). Each round also
/// reads the server's CPU time around it: `work` says how many units of work
/// (messages, requests, connections) a round's values stand for, and the
/// server's CPU µs per unit is appended as the last value (see
/// [`Paired::cpu_row`]).
///
/// The ratio is the median of each pair's ratio, not the ratio of the two
/// medians: this machine's speed swings by up to 1.8x within seconds (a CPU
/// loop on one core takes 275-515 ms from one second to the next), and the two
/// halves of a pair run back to back, so they mostly see the same speed.
pub async fn alternate<F, Fut>(
    rounds: usize,
    native: Target,
    ours: Target,
    work: impl Fn(&[f64]) -> f64,
    mut measure: F,
) -> Paired
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Vec<f64>>,
{
    let mut run = async |target: Target| {
        let before = cpu_seconds(target.pid).unwrap_or(f64::NAN);
        let mut values = measure(target.addr).await;
        let spent = cpu_seconds(target.pid).unwrap_or(f64::NAN) - before;
        values.push(spent * 1e6 / work(&values).max(1.0));
        values
    };
    let (mut a, mut b): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            a.push(run(native).await);
            b.push(run(ours).await);
        } else {
            b.push(run(ours).await);
            a.push(run(native).await);
        }
    }
    let values = a[0].len();
    let medians =
        |runs: &[Vec<f64>]| -> Vec<f64> { (0..values).map(|i| median(runs.iter().map(|r| r[i]).collect())).collect() };
    let per_round: Vec<Vec<f64>> = (0..values)
        .map(|i| a.iter().zip(&b).filter(|(n, _)| n[i] != 0.0).map(|(n, p)| p[i] / n[i]).collect())
        .collect();
    let ratio = per_round.iter().map(|ratios| (!ratios.is_empty()).then(|| median(ratios.clone()))).collect();
    let ratio_range = per_round
        .iter()
        .map(|ratios| {
            let low = ratios.iter().copied().reduce(f64::min)?;
            let high = ratios.iter().copied().reduce(f64::max)?;
            Some((low, high))
        })
        .collect();
    let difference = (0..values).map(|i| median(a.iter().zip(&b).map(|(n, p)| p[i] - n[i]).collect())).collect();
    Paired { native: medians(&a), ours: medians(&b), ratio, ratio_range, difference }
}

/// The units of work of a round whose value `i` is a rate per second, run
/// for `run`: `rate × seconds`.
pub fn rate_over(i: usize, run: std::time::Duration) -> impl Fn(&[f64]) -> f64 {
    move |values| values[i] * run.as_secs_f64()
}
