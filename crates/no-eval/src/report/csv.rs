//! Plain CSV writers (comma-separated, one header line, `.` decimals, empty cell = not
//! measured), so the figures load in any spreadsheet or `pandas.read_csv` without a CSV crate.

use std::fmt::Write;

use super::StudyResults;

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |x| format!("{x:.6e}"))
}

/// Quotes a text cell if it holds a separator or a quote.
fn text(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per model and seed with the report table's figures.
pub fn results_csv(r: &StudyResults) -> String {
    let mut out = String::from(
        "model,variant,seed,replicate,params,train_rel_l2,val_rel_l2,test_rel_l2_v,test_rel_l2_w,test_median_rel_l1_v,\
         train_median_rel_l2,val_median_rel_l2,test_median_rel_l2_v,test_median_rel_l2_w,\
         equiv_time_v,equiv_space_v,train_wall_s,latency_p50_b1_ms,throughput_b32,fine_grid_rel_l2_v\n",
    );
    for row in r.rows() {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{},{},{:.3},{},{},{}",
            text(&row.label),
            text(&row.variant),
            row.seed,
            row.replicate,
            row.params,
            row.train_rel_l2,
            row.val_rel_l2,
            row.test_rel_l2_v,
            row.test_rel_l2_w,
            row.test_median_rel_l1_v,
            row.train_median_rel_l2,
            row.val_median_rel_l2,
            row.test_median_rel_l2_v,
            row.test_median_rel_l2_w,
            opt(row.equiv_time_v),
            opt(row.equiv_space_v),
            row.train_wall_s,
            opt(row.p50_b1_ms),
            opt(row.throughput_b32),
            opt(row.fine_rel_l2_v),
        );
    }
    out
}

/// Every figure of every model over its seeds: one row per model and figure, with the
/// median, range and (with 5 or more seeds) the bootstrap 95% interval of the median.
pub fn summary_csv(r: &StudyResults) -> String {
    let mut out = String::from("model,variant,seeds,figure,median,min,max,ci95_low,ci95_high\n");
    let aggregates = if r.aggregates.is_empty() {
        r.compute_aggregates()
    } else {
        r.aggregates.clone()
    };
    for a in &aggregates {
        for name in super::FIGURES {
            let Some(s) = a.get(name) else { continue };
            let _ = writeln!(
                out,
                "{},{},{},{},{:.6e},{:.6e},{:.6e},{},{}",
                text(&a.label),
                text(&a.variant),
                s.n,
                name,
                s.median,
                s.min,
                s.max,
                opt(s.ci95.map(|c| c.0)),
                opt(s.ci95.map(|c| c.1)),
            );
        }
    }
    out
}

/// Every model's per-epoch log, long format, one block per model and seed.
pub fn epochs_csv(r: &StudyResults) -> String {
    let mut out = String::from("model,seed,epoch,train_loss,val_error,lr,wall_s,samples_per_s\n");
    for m in &r.models {
        for e in &m.epochs {
            let _ = writeln!(
                out,
                "{},{},{},{:.6e},{},{:.6e},{:.4},{:.2}",
                text(&m.label),
                m.seed,
                e.epoch,
                e.train_loss,
                opt(e.val_error),
                e.lr,
                e.wall_s,
                e.samples_per_s
            );
        }
    }
    out
}

/// The equivariance curves (models per seed, and the solver with an empty seed), long
/// format: mean and median E(s) of v and w.
pub fn curves_csv(r: &StudyResults) -> String {
    let mut out = String::from("model,seed,axis,steps,shift,mean_v,median_v,mean_w,median_w\n");
    let solver = [
        ("solver", String::new(), &r.solver_time_curve),
        ("solver", String::new(), &r.solver_space_curve),
    ];
    let models = r.models.iter().flat_map(|m| {
        [
            (m.label.as_str(), m.seed.to_string(), &m.time_curve),
            (m.label.as_str(), m.seed.to_string(), &m.space_curve),
        ]
    });
    for (name, seed, c) in solver.into_iter().chain(models) {
        for p in &c.points {
            let ch = |i: usize| {
                p.channels
                    .get(i)
                    .map_or((f64::NAN, f64::NAN), |s| (s.mean, s.median))
            };
            let ((mv, dv), (mw, dw)) = (ch(0), ch(1));
            let axis = serde_json::to_value(c.axis)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{},{},{},{},{:.6},{:.6e},{:.6e},{:.6e},{:.6e}",
                text(name),
                seed,
                axis,
                p.steps,
                p.shift,
                mv,
                dv,
                mw,
                dw
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cells_are_quoted_when_needed() {
        assert_eq!(text("fno"), "fno");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(opt(None), "");
        assert_eq!(opt(Some(0.5)), "5.000000e-1");
    }
}
