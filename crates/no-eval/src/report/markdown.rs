//! `report.md`: the table of figures per model and the paragraphs that state what they show.

use std::fmt::Write;
use std::path::PathBuf;

use super::{Row, StudyResults, Variant};

/// A model "generalises to translated stimuli" when its translated-test error is at most
/// this many times its in-distribution (validation) error.
pub const GENERALISES_RATIO: f64 = 2.0;

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

/// Mean of the v and w translated-test errors.
fn test_mean(r: &Row) -> f64 {
    0.5 * (r.test_rel_l2_v + r.test_rel_l2_w)
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
    let by_val = ranked(&rows, |r| r.val_rel_l2);
    let by_test = ranked(&rows, test_mean);
    let by_eq = ranked(&rows, |r| r.equiv_time_v.unwrap_or(f64::NAN));
    let mut s = String::new();
    let _ = writeln!(s, "**In distribution** (validation, onset fixed as in training), mean relative L2 over v and w: {}.\n", list(&by_val, |r| r.val_rel_l2));
    let _ = writeln!(
        s,
        "**Translated test** (onset and centre moved), mean relative L2 over v and w: {}.\n",
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
    let generalise: Vec<&str> = rows
        .iter()
        .filter(|r| test_mean(r) <= GENERALISES_RATIO * r.val_rel_l2)
        .map(|r| r.label.as_str())
        .collect();
    let fail: Vec<&str> = rows
        .iter()
        .filter(|r| test_mean(r) > GENERALISES_RATIO * r.val_rel_l2)
        .map(|r| r.label.as_str())
        .collect();
    let _ = writeln!(
        s,
        "Taking \"generalises to translated stimuli\" to mean a translated-test error at most {GENERALISES_RATIO}× the \
         in-distribution error: {} generalise; {} do not.",
        if generalise.is_empty() { "none".into() } else { generalise.join(", ") },
        if fail.is_empty() { "none".into() } else { fail.join(", ") }
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
        let verdict = if test_mean(r) <= GENERALISES_RATIO * r.val_rel_l2 {
            "generalises"
        } else {
            "does not generalise"
        };
        let _ = write!(s, "- **{}** ({}): translated-test error {} against in-distribution {} — it {verdict} to translated stimuli", r.label, variant.label(), pct(test_mean(r)), pct(r.val_rel_l2));
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
    let _ = writeln!(s, "Errors are relative L2 means over samples (docs/evaluation.md). Equivariance E(s) = ‖M(S_s I) − S_s M(I)‖ / ‖S_s M(I)‖ on the common window, for v, at a delay of {:.2} time units ({} steps) and a space shift of {:.3} ({} steps).\n",
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
            pct(r.train_rel_l2),
            pct(r.val_rel_l2),
            pct(r.test_rel_l2_v),
            pct(r.test_rel_l2_w),
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
