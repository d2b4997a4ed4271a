//! `report.md`: the table of figures per model and the paragraphs that state what they show.

use std::fmt::Write;
use std::path::PathBuf;

use super::{Row, StudyResults, Variant};

/// A model "generalises to translated stimuli" when its translated-test error is at most
/// this many times its in-distribution (validation) error.
pub const GENERALISES_RATIO: f64 = 2.0;

/// Above this in-distribution error a model does not fit its training distribution, and
/// whether it "generalises" is left undecided.
pub const FITS_THRESHOLD: f64 = 0.5;

/// What the report says about a model's behaviour on translated stimuli.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Translated-test error at most [`GENERALISES_RATIO`] × the in-distribution error.
    Generalises,
    /// Translated-test error above that.
    DoesNotGeneralise,
    /// In-distribution error at or above [`FITS_THRESHOLD`] (or not finite): no judgement.
    Undecided,
}

/// The verdict from the in-distribution (validation) and translated-test errors.
pub fn verdict(in_distribution: f64, translated: f64) -> Verdict {
    if !(in_distribution.is_finite() && translated.is_finite()) || in_distribution >= FITS_THRESHOLD
    {
        Verdict::Undecided
    } else if translated <= GENERALISES_RATIO * in_distribution {
        Verdict::Generalises
    } else {
        Verdict::DoesNotGeneralise
    }
}

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2}%", 100.0 * v)
    } else {
        "n/a".into()
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), pct)
}

/// The translated-test statistic the report judges by: the median over samples of the
/// relative L2, averaged over v and w. Medians, not means: a sub-threshold stimulus gives a
/// target about 20× smaller in norm than a wave, and the few such samples would otherwise
/// decide the mean (docs/evaluation.md).
fn test_mean(r: &Row) -> f64 {
    0.5 * (r.test_median_rel_l2_v + r.test_median_rel_l2_w)
}

/// The in-distribution statistic the report judges by (median, as [`test_mean`]).
fn val_stat(r: &Row) -> f64 {
    r.val_median_rel_l2
}

/// `median (mean)` as percentages.
fn median_and_mean(median: f64, mean: f64) -> String {
    format!("{} ({})", pct(median), pct(mean))
}

fn ranked(rows: &[Row], key: impl Fn(&Row) -> f64) -> Vec<&Row> {
    let mut v: Vec<&Row> = rows.iter().filter(|r| key(r).is_finite()).collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v
}

fn list(rows: &[&Row], key: impl Fn(&Row) -> f64) -> String {
    rows.iter()
        .map(|r| format!("{} ({})", r.label, pct(key(r))))
        .collect::<Vec<_>>()
        .join(" < ")
}

/// The paragraph stating the ranking found.
pub fn ranking_paragraph(results: &StudyResults) -> String {
    let rows: Vec<Row> = results
        .rows()
        .into_iter()
        .filter(|r| r.variant == Variant::Paper.label())
        .collect();
    if rows.is_empty() {
        return "No model in the paper setting was trained, so there is no ranking.\n".into();
    }
    let by_val = ranked(&rows, val_stat);
    let by_test = ranked(&rows, test_mean);
    let by_eq = ranked(&rows, |r| r.equiv_time_v.unwrap_or(f64::NAN));
    let mut s = String::new();
    let _ = writeln!(s, "**In distribution** (validation, onset fixed as in training), median relative L2 over v and w: {}.\n", list(&by_val, val_stat));
    let _ = writeln!(
        s,
        "**Translated test** (onset and centre moved), median relative L2 over v and w: {}.\n",
        list(&by_test, test_mean)
    );
    let _ = writeln!(
        s,
        "**Equivariance to a delay of {:.2} time units** (E of v; the solver scores {}): {}.\n",
        results.fixed_shifts.time,
        opt_pct(
            results
                .solver_time_curve
                .at(results.fixed_shifts.time_steps)
                .map(|p| p.channels[0].mean)
        ),
        list(&by_eq, |r| r.equiv_time_v.unwrap_or(f64::NAN))
    );
    let names = |v: Verdict| -> String {
        let n: Vec<&str> = rows
            .iter()
            .filter(|r| verdict(val_stat(r), test_mean(r)) == v)
            .map(|r| r.label.as_str())
            .collect();
        if n.is_empty() {
            "none".into()
        } else {
            n.join(", ")
        }
    };
    let _ = writeln!(
        s,
        "Taking \"generalises to translated stimuli\" to mean a translated-test error at most {GENERALISES_RATIO}× the \
         in-distribution error: {} generalise; {} do not; undecided (in-distribution error of {:.0}% or more, so the \
         model does not fit even its training distribution): {}.",
        names(Verdict::Generalises),
        names(Verdict::DoesNotGeneralise),
        100.0 * FITS_THRESHOLD,
        names(Verdict::Undecided)
    );
    s
}

/// The paragraph on the two remedies (no positional input, delay augmentation).
pub fn remedies_paragraph(results: &StudyResults) -> String {
    let rows = results.rows();
    let remedies: Vec<(&Row, Variant)> = results
        .models
        .iter()
        .zip(&rows)
        .filter(|(m, _)| m.variant != Variant::Paper)
        .map(|(m, r)| (r, m.variant))
        .collect();
    if remedies.is_empty() {
        return "No remedy was run (see `--remedies`).\n".into();
    }
    let mut s = String::new();
    for (r, variant) in remedies {
        let arch = results
            .models
            .iter()
            .find(|m| m.label == r.label)
            .map(|m| m.architecture.clone())
            .unwrap_or_default();
        let base = results
            .models
            .iter()
            .zip(&rows)
            .find(|(m, _)| m.architecture == arch && m.variant == Variant::Paper)
            .map(|(_, b)| b);
        let verdict = match verdict(val_stat(r), test_mean(r)) {
            Verdict::Generalises => "it generalises to translated stimuli",
            Verdict::DoesNotGeneralise => "it does not generalise to translated stimuli",
            Verdict::Undecided => "undecided: it does not fit even its training distribution",
        };
        let _ = write!(
            s,
            "- **{}** ({}): translated-test error {} against in-distribution {} — {verdict}",
            r.label,
            variant.label(),
            pct(test_mean(r)),
            pct(val_stat(r))
        );
        if let Some(b) = base {
            let _ = write!(
                s,
                "; the paper-setting {} scores {} on the same test",
                b.label,
                pct(test_mean(b))
            );
        }
        let _ = writeln!(s, ".");
    }
    s
}

/// The whole `report.md`, linking the figure files by name.
pub fn report(results: &StudyResults, figures: &[PathBuf]) -> String {
    let mut s = String::new();
    let (nt, nx) = results.grid;
    let (ntr, nva, nte) = results.samples;
    let _ = writeln!(
        s,
        "# Translation benchmark: `{}` protocol\n",
        results.protocol_name
    );
    let _ = writeln!(
        s,
        "Device: {}. Output grid {nt} × {nx} (t × x). Samples: {ntr} train, {nva} validation (onset fixed), {nte} translated test (onset and centre moved).\n",
        results.device
    );
    let _ = writeln!(s, "Errors are relative L2 per sample, shown as median (mean) over samples; verdicts and rankings use the medians, since the few sub-threshold samples (no wave, a target about 20× smaller in norm) dominate the means (docs/evaluation.md). Equivariance E(s) = ‖M(S_s I) − S_s M(I)‖ / ‖S_s M(I)‖ on the common window, for v, at a delay of {:.2} time units ({} steps) and a space shift of {:.3} ({} steps).\n",
        results.fixed_shifts.time, results.fixed_shifts.time_steps, results.fixed_shifts.space, results.fixed_shifts.space_steps);
    s.push_str("| model | variant | params | train | validation | test v | test w | E(delay) v | E(space) v | train time | p50 @1 | throughput @32 | finer grid v |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in results.rows() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s | {} | {} | {} |",
            r.label,
            r.variant,
            r.params,
            median_and_mean(r.train_median_rel_l2, r.train_rel_l2),
            median_and_mean(r.val_median_rel_l2, r.val_rel_l2),
            median_and_mean(r.test_median_rel_l2_v, r.test_rel_l2_v),
            median_and_mean(r.test_median_rel_l2_w, r.test_rel_l2_w),
            opt_pct(r.equiv_time_v),
            opt_pct(r.equiv_space_v),
            r.train_wall_s,
            r.p50_b1_ms
                .map_or_else(|| "n/a".into(), |v| format!("{v:.2} ms")),
            r.throughput_b32
                .map_or_else(|| "n/a".into(), |v| format!("{v:.0}/s")),
            opt_pct(r.fine_rel_l2_v),
        );
    }
    let solver =
        |c: &crate::translation::EquivarianceCurve, k| opt_pct(c.at(k).map(|p| p.channels[0].mean));
    let _ = writeln!(
        s,
        "| solver (ground truth) | — | — | — | — | — | — | {} | {} | — | — | — | — |\n",
        solver(&results.solver_time_curve, results.fixed_shifts.time_steps),
        solver(
            &results.solver_space_curve,
            results.fixed_shifts.space_steps
        )
    );
    for (label, why) in &results.skipped {
        let _ = writeln!(s, "Skipped: **{label}** ({why}).\n");
    }
    s.push_str("## Ranking\n\n");
    s.push_str(&ranking_paragraph(results));
    s.push_str("\n## Beyond the study: remedies\n\n");
    s.push_str(&remedies_paragraph(results));
    s.push_str("\n## Phases\n\n");
    for (name, secs) in &results.phases {
        let _ = writeln!(s, "- {name}: {secs:.1} s");
    }
    let total: f64 = results.phases.iter().map(|(_, t)| t).sum();
    let _ = writeln!(s, "- total: {total:.1} s\n");
    if !figures.is_empty() {
        s.push_str("## Figures\n\n");
        for f in figures {
            if let Some(name) = f.file_name().and_then(|n| n.to_str()) {
                let _ = writeln!(s, "![{name}]({name})\n");
            }
        }
    }
    s.push_str("Per-model figures are in `results.csv`, `results.json` (all summaries and quantiles), `epochs.csv` (per-epoch logs) and `curves.csv` (equivariance curves).\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_thresholds() {
        assert_eq!(verdict(0.1, 0.2), Verdict::Generalises);
        assert_eq!(verdict(0.1, 0.21), Verdict::DoesNotGeneralise);
        assert_eq!(verdict(0.5, 0.5), Verdict::Undecided);
        assert_eq!(verdict(f64::NAN, 0.1), Verdict::Undecided);
        assert_eq!(pct(0.1234), "12.34%");
        assert_eq!(pct(f64::INFINITY), "n/a");
    }
}
