//! The report: every figure as a row of a Markdown table (shape, figure, value, ratio to the
//! bare handler's), each phase's peak RSS after them, then the failed requests of each phase.

/// One row of the table.
pub(super) struct Row {
    shape: &'static str,
    figure: String,
    value: f64,
    /// How `value` is printed: `us`, `ms`, `x`, `MB`, `B`, or `` for a count.
    unit: &'static str,
    ratio: Option<f64>,
}

pub(super) fn row(
    shape: &'static str,
    figure: impl Into<String>,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
) -> Row {
    Row {
        shape,
        figure: figure.into(),
        value,
        unit,
        ratio,
    }
}

/// What a run measured, gathered phase by phase and printed at the end.
#[derive(Default)]
pub(super) struct Report {
    rows: Vec<Row>,
    /// Each target's peak RSS, printed after the other rows.
    rss: Vec<(&'static str, Option<f64>)>,
    /// Failed requests, by phase.
    failures: Vec<(&'static str, u64)>,
}

impl Report {
    pub(super) fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub(super) fn extend(&mut self, rows: impl IntoIterator<Item = Row>) {
        self.rows.extend(rows);
    }

    /// Adds a p50 and a p99 row for `shape`, each with its ratio to the same percentile of the
    /// baseline. `label` holds `{}` where the percentile's name goes.
    pub(super) fn percentiles(
        &mut self,
        shape: &'static str,
        label: &str,
        sorted_us: &[u32],
        baseline_us: &[u32],
    ) {
        for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
            let value = percentile_ms(sorted_us, p);
            self.rows.push(row(
                shape,
                label.replace("{}", name),
                value,
                "ms",
                Some(value / percentile_ms(baseline_us, p)),
            ));
        }
    }

    pub(super) fn peak_rss(&mut self, shape: &'static str, rss: Option<f64>) {
        self.rss.push((shape, rss));
    }

    pub(super) fn failed(&mut self, phase: &'static str, requests: u64) {
        self.failures.push((phase, requests));
    }

    /// The table, then the failed requests of each phase.
    pub(super) fn print(mut self) {
        for (shape, rss) in self.rss {
            self.rows
                .push(row(shape, "peak RSS", rss.unwrap_or(f64::NAN), "MB", None));
        }
        println!();
        println!("| shape | figure | value | ratio to bare |");
        println!("|---|---|---:|---:|");
        for r in &self.rows {
            let value = if r.unit == "us" {
                format!("{:.1} µs", r.value)
            } else if r.unit == "ms" {
                format!("{:.2} ms", r.value)
            } else if r.unit == "x" {
                format!("{:.2}", r.value)
            } else if r.unit == "MB" {
                format!("{:.1} MB", r.value)
            } else if r.unit == "B" && r.value.is_nan() {
                "unknown".to_string()
            } else if r.unit == "B" {
                format!("{:.0} B", r.value)
            } else {
                format!("{:.0}", r.value)
            };
            let ratio = r
                .ratio
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "".into());
            println!("| {} | {} | {} | {} |", r.shape, r.figure, value, ratio);
        }
        println!();
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!("failed requests: {}", failures.join(", "));
    }
}

/// The median of some figures (the mean of the middle two for an even count); NaN for none.
pub(super) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    crate::telemetry::nearest_rank(sorted_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median([f64::NAN, 5.0].into_iter()), 5.0);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn percentiles_pick_the_right_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), 51.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
    }
}
