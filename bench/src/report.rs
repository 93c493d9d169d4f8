//! What a full run hands back: its rows as a Markdown table on stdout and as
//! `target/bench/results.json`, and the check that every row measured
//! something.

use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

/// One line of `results.json`.
#[derive(Serialize, Clone)]
pub struct Row {
    pub scenario: String,
    pub mode: String,
    pub metric: String,
    pub portcullis: f64,
    pub native: Option<f64>,
    pub ratio: Option<f64>,
    /// The lowest and highest of the per-round ratios the median comes from:
    /// how much the machine moved during the scenario.
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
}

/// A row measured once per side (or only for portcullis): its ratio is
/// portcullis / native, with no per-round range.
pub fn row(scenario: &str, mode: &str, metric: &str, portcullis: f64, native: Option<f64>) -> Row {
    Row {
        scenario: scenario.into(),
        mode: mode.into(),
        metric: metric.into(),
        portcullis,
        native,
        ratio: native.filter(|n| *n != 0.0).map(|n| portcullis / n),
        ratio_min: None,
        ratio_max: None,
    }
}

/// `probes`: the memory probe's readings (ns per load) at the start, during
/// instantiation and at the end of the run.
pub fn print_table(rows: &[Row], quick: bool, cores: usize, probes: [f64; 3]) {
    println!("| scenario | mode | metric | portcullis | native | ratio | rounds' ratios |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for r in rows {
        let native = r.native.map(|n| format!("{n:.1}")).unwrap_or_else(|| "—".into());
        let ratio = r.ratio.map(|x| format!("{x:.2}")).unwrap_or_else(|| "—".into());
        let range = match (r.ratio_min, r.ratio_max) {
            (Some(low), Some(high)) => format!("{low:.2}–{high:.2}"),
            _ => "—".into(),
        };
        println!("| {} | {} | {} | {:.1} | {native} | {ratio} | {range} |", r.scenario, r.mode, r.metric, r.portcullis);
    }
    println!(
        "\n{} run, {} cores; servers pinned to core 0, load generator to core 1; medians of alternating rounds; \
         ratio: median of the per-round ratios (their lowest and highest in the last column).",
        if quick { "quick" } else { "full" },
        cores
    );
    let [start, instantiation, end] = probes;
    println!(
        "Memory probe (a pointer chase through 384 KiB; higher is a busier machine): {start:.1} ns per load at the \
         start, {instantiation:.1} during instantiation, {end:.1} at the end."
    );
}

/// Writes the rows to `target/bench/results.json` and says where.
pub fn write_json(root: &Path, rows: &[Row]) -> Result<()> {
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(rows)?)?;
    println!("\nwrote {}", out.join("results.json").display());
    Ok(())
}

/// Every scenario must have measured something: a rate or time of 0, or not a
/// number, means a server answered nothing or a load went wrong. (Memory
/// growth, differences from native and CPU per unit need only be numbers.) `cargo xtask
/// test` runs `--quick` and relies on this, asserting no speed, only that
/// every scenario completed.
pub fn check_measured(rows: &[Row]) -> Result<()> {
    let measured = |metric: &str, value: f64| {
        // CPU per unit may read 0 in a short round (10 ms ticks): it is no failure.
        let zero_is_a_value =
            metric.contains("above native") || metric.starts_with("bytes/") || metric.starts_with("server CPU");
        value.is_finite() && (zero_is_a_value || value > 0.0)
    };
    let broken: Vec<String> = rows
        .iter()
        .filter(|r| !measured(&r.metric, r.portcullis) || r.native.is_some_and(|n| !measured(&r.metric, n)))
        .map(|r| format!("{} ({}, {})", r.scenario, r.mode, r.metric))
        .collect();
    if !broken.is_empty() {
        bail!("these rows measured nothing: {}", broken.join("; "));
    }
    Ok(())
}
