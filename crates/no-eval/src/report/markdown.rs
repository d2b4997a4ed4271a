//! `report.md`: the table of figures per model and the paragraphs that state what they show.

use std::fmt::Write;
use std::path::PathBuf;

use super::spread::{compare, seeds_agreeing_less, Order, Spread};
use super::{JobRun, Row, StudyResults, Variant};

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

/// How a figure is printed: multiplied by `scale`, with `decimals`, then `unit`.
#[derive(Debug, Clone, Copy)]
struct Fmt {
    scale: f64,
    decimals: usize,
    unit: &'static str,
}

/// Percentages, seconds, milliseconds and rates.
const PCT: Fmt = Fmt {
    scale: 100.0,
    decimals: 2,
    unit: "%",
};
const SECS: Fmt = Fmt {
    scale: 1.0,
    decimals: 1,
    unit: " s",
};
const MS: Fmt = Fmt {
    scale: 1.0,
    decimals: 2,
    unit: " ms",
};
const PER_S: Fmt = Fmt {
    scale: 1.0,
    decimals: 0,
    unit: "/s",
};

impl Fmt {
    fn number(self, v: f64) -> String {
        format!("{:.*}", self.decimals, v * self.scale)
    }
}

/// A figure of a group of seeds: the value with one seed, else `median [min–max]` (the
/// unit once, after the median), and with 5 or more seeds `median [95% CI lo–hi]`, the
/// bootstrap interval of the median; `n/a` when no seed measured it.
fn over_seeds(values: &[f64], f: Fmt) -> String {
    match Spread::of(values) {
        None => "n/a".into(),
        Some(s) if s.n == 1 => format!("{}{}", f.number(s.median), f.unit),
        Some(Spread {
            median,
            ci95: Some((lo, hi)),
            ..
        }) => format!(
            "{}{} [95% CI {}–{}]",
            f.number(median),
            f.unit,
            f.number(lo),
            f.number(hi)
        ),
        Some(s) => format!(
            "{}{} [{}–{}]",
            f.number(s.median),
            f.unit,
            f.number(s.min),
            f.number(s.max)
        ),
    }
}

/// The values of a statistic over a group's seeds, in replicate order (NaN where not
/// measured, so that seeds stay paired by position).
fn values(group: &[Row], stat: &dyn Fn(&Row) -> Option<f64>) -> Vec<f64> {
    group.iter().map(|r| stat(r).unwrap_or(f64::NAN)).collect()
}

/// The groups ordered by the median over seeds of `stat` (groups without a finite value
/// left out), joined by `<` where the ranges over seeds separate and by `≈` where they
/// overlap, each relation with the number of seeds in which it holds pair by pair.
fn chain(groups: &[&Vec<Row>], stat: &dyn Fn(&Row) -> Option<f64>) -> String {
    let mut ranked: Vec<(&Vec<Row>, Vec<f64>, f64)> = groups
        .iter()
        .filter_map(|g| {
            let v = values(g, stat);
            Spread::of(&v).map(|s| (*g, v, s.median))
        })
        .collect();
    ranked.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut s = String::new();
    for (k, (g, v, _)) in ranked.iter().enumerate() {
        if k > 0 {
            let prev = &ranked[k - 1].1;
            let (agree, pairs) = seeds_agreeing_less(prev, v);
            let rel = match compare(prev, v) {
                Order::Less => "<",
                _ => "≈",
            };
            let _ = write!(s, " {rel} ({agree}/{pairs}) ");
        }
        let _ = write!(s, "{} {}", g[0].label, over_seeds(v, PCT));
    }
    s
}

/// How the seeds of a group are judged: the verdict of every seed, and their count.
fn verdicts(group: &[Row]) -> Vec<Verdict> {
    group
        .iter()
        .map(|r| verdict(r.val_stat(), r.test_stat()))
        .collect()
}

/// `generalises (3/3 seeds)`, or the split when the seeds disagree.
fn verdict_words(group: &[Row]) -> String {
    let v = verdicts(group);
    let n = v.len();
    let count = |x: Verdict| v.iter().filter(|&&y| y == x).count();
    let name = |x: Verdict| match x {
        Verdict::Generalises => "generalises",
        Verdict::DoesNotGeneralise => "does not generalise",
        Verdict::Undecided => "undecided",
    };
    let parts: Vec<String> = [
        Verdict::Generalises,
        Verdict::DoesNotGeneralise,
        Verdict::Undecided,
    ]
    .into_iter()
    .filter(|&x| count(x) > 0)
    .map(|x| format!("{} in {}/{n} seeds", name(x), count(x)))
    .collect();
    parts.join(", ")
}

/// The paper-setting groups of `results` (one per model label).
fn paper_groups(results: &StudyResults) -> Vec<Vec<Row>> {
    results
        .grouped_rows()
        .into_iter()
        .filter(|g| g[0].variant == Variant::Paper.label())
        .collect()
}

/// The paragraph stating the ranking found, with its spread over seeds: `A < B` only
/// where the ranges over seeds separate, `A ≈ B` otherwise; the subscript `k/n` says in
/// how many of the n seeds the order of the pair holds.
pub fn ranking_paragraph(results: &StudyResults) -> String {
    let groups = paper_groups(results);
    if groups.is_empty() {
        return "No model in the paper setting was trained, so there is no ranking.\n".into();
    }
    let refs: Vec<&Vec<Row>> = groups.iter().collect();
    let seeds: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let (lo, hi) = (
        seeds.iter().min().copied().unwrap_or(0),
        seeds.iter().max().copied().unwrap_or(0),
    );
    let seeds_text = if lo == hi {
        format!("{lo}")
    } else {
        format!("{lo} to {hi}")
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Each figure is the median over {seeds_text} seeds per model, with its range [min–max] over seeds \
         (with 5 or more seeds, the bootstrap 95% interval of the median). `A < B` is stated only where the \
         min–max ranges separate, otherwise `A ≈ B`; the (k/n) after each relation counts the seeds in which \
         the pair is in that order.\n"
    );
    let _ = writeln!(s, "**In distribution** (validation, onset fixed as in training), median relative L2 over v and w: {}.\n",
        chain(&refs, &|r| Some(r.val_stat())));
    let _ = writeln!(
        s,
        "**Translated test** (onset and centre moved), median relative L2 over v and w: {}.\n",
        chain(&refs, &|r| Some(r.test_stat()))
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
        chain(&refs, &|r| r.equiv_time_v)
    );
    let _ = writeln!(
        s,
        "Taking \"generalises to translated stimuli\" to mean a translated-test error at most {GENERALISES_RATIO}× the \
         in-distribution error (undecided where the in-distribution error is {:.0}% or more, so the model does not fit \
         even its training distribution), per seed:",
        100.0 * FITS_THRESHOLD,
    );
    for g in &groups {
        let _ = writeln!(s, "- {}: {}.", g[0].label, verdict_words(g));
    }
    s
}

/// The paragraph on the remedies (no positional input, delay augmentation, the causal
/// operator), each against the paper setting of its architecture, over seeds.
pub fn remedies_paragraph(results: &StudyResults) -> String {
    let groups = results.grouped_rows();
    let arch = |label: &str| {
        results
            .models
            .iter()
            .find(|m| m.label == label)
            .map(|m| m.architecture.clone())
            .unwrap_or_default()
    };
    let remedies: Vec<&Vec<Row>> = groups
        .iter()
        .filter(|g| g[0].variant != Variant::Paper.label())
        .collect();
    if remedies.is_empty() {
        return "No remedy was run (see `--remedies`).\n".into();
    }
    let test = |g: &[Row]| values(g, &|r| Some(r.test_stat()));
    let mut s = String::new();
    for g in remedies {
        let label = &g[0].label;
        let _ = write!(
            s,
            "- **{label}** ({}): translated-test error {} against in-distribution {}; {}",
            g[0].variant,
            over_seeds(&test(g), PCT),
            over_seeds(&values(g, &|r| Some(r.val_stat())), PCT),
            verdict_words(g)
        );
        let base = groups
            .iter()
            .find(|b| b[0].variant == Variant::Paper.label() && arch(&b[0].label) == arch(label));
        if let Some(b) = base {
            let rel = match compare(&test(g), &test(b)) {
                Order::Less => "below",
                Order::Greater => "above",
                Order::Overlap => "not separated from",
            };
            let _ = write!(
                s,
                "; {rel} the paper-setting {}'s {} on the same test",
                b[0].label,
                over_seeds(&test(b), PCT)
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
    let _ = writeln!(s, "Errors are relative L2 per sample, summarised by the median over samples; verdicts and rankings use these medians, since the few sub-threshold samples (no wave, a target about 20× smaller in norm) dominate the means (docs/evaluation.md; `results.csv` has the means too). Equivariance E(s) = ‖M(S_s I) − S_s M(I)‖ / ‖S_s M(I)‖ on the common window, for v, at a delay of {:.2} time units ({} steps) and a space shift of {:.3} ({} steps).\n",
        results.fixed_shifts.time, results.fixed_shifts.time_steps, results.fixed_shifts.space, results.fixed_shifts.space_steps);
    let _ = writeln!(s, "Each model is trained once per seed (the seed sets the initial weights, the shuffling and the augmentation; the data are the protocol's). A cell shows the median over seeds and, with several seeds, the range [min–max] (with 5 seeds or more, the bootstrap 95% interval of the median instead); `results.csv` has one row per seed and `summary.csv` every figure's median, range and, with 5 or more seeds, a bootstrap 95% interval.\n");
    s.push_str("| model | variant | seeds | params | train | validation | test v | test w | E(delay) v | E(space) v | train time | p50 @1 | throughput @32 | finer grid v |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for g in results.grouped_rows() {
        let col = |stat: &dyn Fn(&Row) -> Option<f64>, f: Fmt| over_seeds(&values(&g, stat), f);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&g[0].label),
            cell(&g[0].variant),
            g.len(),
            g[0].params,
            col(&|r| Some(r.train_median_rel_l2), PCT),
            col(&|r| Some(r.val_median_rel_l2), PCT),
            col(&|r| Some(r.test_median_rel_l2_v), PCT),
            col(&|r| Some(r.test_median_rel_l2_w), PCT),
            col(&|r| r.equiv_time_v, PCT),
            col(&|r| r.equiv_space_v, PCT),
            col(&|r| Some(r.train_wall_s), SECS),
            col(&|r| r.p50_b1_ms, MS),
            col(&|r| r.throughput_b32, PER_S),
            col(&|r| r.fine_rel_l2_v, PCT),
        );
    }
    let solver =
        |c: &crate::translation::EquivarianceCurve, k| opt_pct(c.at(k).map(|p| p.channels[0].mean));
    let _ = writeln!(
        s,
        "| solver (ground truth) | — | — | — | — | — | — | — | {} | {} | — | — | — | — |\n",
        solver(&results.solver_time_curve, results.fixed_shifts.time_steps),
        solver(
            &results.solver_space_curve,
            results.fixed_shifts.space_steps
        )
    );
    // One line per reason (a partial report lists every job not run yet under one).
    let mut reasons: Vec<(&str, Vec<String>)> = Vec::new();
    for (label, why) in &results.skipped {
        match reasons.iter_mut().find(|(w, _)| *w == why.as_str()) {
            Some((_, labels)) => labels.push(format!("**{}**", cell(label))),
            None => reasons.push((why, vec![format!("**{}**", cell(label))])),
        }
    }
    for (why, labels) in reasons {
        let _ = writeln!(s, "Skipped: {} ({}).\n", labels.join(", "), cell(why));
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
    s.push_str(&jobs_section(&results.jobs));
    if !figures.is_empty() {
        s.push_str("## Figures\n\n");
        for f in figures {
            if let Some(name) = f.file_name().and_then(|n| n.to_str()) {
                let _ = writeln!(s, "![{name}]({name})\n");
                if name == "equivariance.png" {
                    s.push_str(
                        "E(s) at or below 1e-5 (equivariant to rounding) is drawn on the 1e-5 \
                         line of the log scale; the legend marks those curves \"(≤ 1e-5)\".\n\n",
                    );
                }
            }
        }
    }
    s.push_str("Per-model figures are in `results.csv` (a row per seed), `summary.csv` (over seeds), `results.json` (all summaries and quantiles), `epochs.csv` (per-epoch logs) and `curves.csv` (equivariance curves).\n");
    s
}

/// A duration in seconds, with hours beside it from one hour on.
fn duration(secs: f64) -> String {
    if !secs.is_finite() {
        "n/a".to_string()
    } else if secs >= 3600.0 {
        format!("{secs:.0} s ({:.1} h)", secs / 3600.0)
    } else if secs >= 100.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs:.1} s")
    }
}

/// The "Jobs" section: how each job ran (device, threads, CPU, epochs, training and process
/// wall times, resumption). The CPUs are listed once and referred to by number, since a
/// study's jobs mostly share a few machines. Empty when no job is listed.
fn jobs_section(jobs: &[JobRun]) -> String {
    if jobs.is_empty() {
        return String::new();
    }
    let mut cpus: Vec<&str> = jobs.iter().filter_map(|j| j.cpu.as_deref()).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let mut s = String::from("## Jobs\n\n");
    s.push_str(
        "How each job ran, from its record. *Training* is the sum of the job's epoch times \
         over every process that trained it (a job stopped and resumed counts each epoch \
         once); *process* is the wall time of the process that finished it, from the epoch it \
         resumed at, evaluation included.\n\n",
    );
    for (k, cpu) in cpus.iter().enumerate() {
        let _ = writeln!(s, "- CPU [{}]: {}", k + 1, cell(cpu));
    }
    if !cpus.is_empty() {
        s.push('\n');
    }
    s.push_str(
        "| job | model | seed | device | epochs | training | process | resumed from epoch | CPU |\n\
         |---:|---|---:|---|---:|---:|---:|---:|---|\n",
    );
    for j in jobs {
        let per = if j.threads == 1 { "thread" } else { "threads" };
        let cpu = j
            .cpu
            .as_deref()
            .and_then(|c| cpus.iter().position(|&x| x == c))
            .map_or("not recorded".to_string(), |k| format!("[{}]", k + 1));
        let training = match (&j.skipped, j.train_wall_s) {
            (Some(why), _) => format!("skipped: {}", cell(why)),
            (None, Some(t)) => duration(t),
            (None, None) => "n/a".to_string(),
        };
        let resumed = j
            .resumed_from_epoch
            .map_or("—".to_string(), |e| e.to_string());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}, {} {per} | {} | {training} | {} | {resumed} | {cpu} |",
            j.index,
            cell(&j.label),
            j.seed,
            cell(&j.device),
            j.threads,
            j.epochs,
            duration(j.process_wall_s)
        );
    }
    let trained: f64 = jobs.iter().filter_map(|j| j.train_wall_s).sum();
    let _ = writeln!(
        s,
        "\nTraining time over the {} jobs: {}.\n",
        jobs.len(),
        duration(trained)
    );
    s
}

/// `text` made safe for one Markdown table cell or list line: a `|` would end the cell and a
/// line break the row, and both can come from a hand-edited record or a protocol's label, so
/// `|` is escaped and every control character becomes a space.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' => out.push_str("\\|"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
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

    #[test]
    fn figures_over_seeds_show_median_and_range() {
        assert_eq!(over_seeds(&[0.1234], PCT), "12.34%");
        assert_eq!(over_seeds(&[0.3, 0.1, 0.2], PCT), "20.00% [10.00–30.00]");
        assert_eq!(over_seeds(&[f64::NAN], SECS), "n/a");
        assert_eq!(over_seeds(&[2.0, 4.0], SECS), "3.0 s [2.0–4.0]");
        // Five seeds: the bootstrap interval of the median instead of the range.
        let five = over_seeds(&[0.1, 0.2, 0.3, 0.4, 0.5], PCT);
        assert!(five.starts_with("30.00% [95% CI "), "{five}");
    }

    fn row(label: &str, val: f64) -> Row {
        Row {
            label: label.into(),
            variant: Variant::Paper.label().into(),
            replicate: 0,
            seed: 0,
            params: 1,
            train_rel_l2: val,
            val_rel_l2: val,
            test_rel_l2_v: val,
            test_rel_l2_w: val,
            test_median_rel_l1_v: val,
            train_median_rel_l2: val,
            val_median_rel_l2: val,
            test_median_rel_l2_v: val,
            test_median_rel_l2_w: val,
            equiv_time_v: None,
            equiv_space_v: None,
            train_wall_s: 1.0,
            p50_b1_ms: None,
            throughput_b32: None,
            fine_rel_l2_v: None,
        }
    }

    fn job(index: usize, cpu: Option<&str>, resumed: Option<usize>) -> JobRun {
        JobRun {
            index,
            label: "fno".into(),
            seed: 7 + index as u64,
            device: "Cpu".into(),
            threads: 1 + index,
            cpu: cpu.map(str::to_string),
            epochs: 100,
            train_wall_s: Some(3725.0),
            process_wall_s: 42.25,
            resumed_from_epoch: resumed,
            skipped: None,
        }
    }

    #[test]
    fn jobs_table_numbers_each_cpu_once_and_says_what_is_not_recorded() {
        assert_eq!(jobs_section(&[]), "");
        let text = jobs_section(&[
            job(0, Some("Xeon"), None),
            job(1, Some("EPYC"), Some(29)),
            job(2, None, None),
            job(3, Some("Xeon"), None),
        ]);
        assert!(
            text.contains("- CPU [1]: EPYC\n- CPU [2]: Xeon\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "| 0 | fno | 7 | Cpu, 1 thread | 100 | 3725 s (1.0 h) | 42.2 s | — | [2] |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| 1 | fno | 8 | Cpu, 2 threads | 100 | 3725 s (1.0 h) | 42.2 s | 29 | [1] |"
            ),
            "{text}"
        );
        assert!(text.contains("| 2 | fno | 9 | Cpu, 3 threads | 100 | 3725 s (1.0 h) | 42.2 s | — | not recorded |"), "{text}");
        assert!(
            text.contains(
                "| 3 | fno | 10 | Cpu, 4 threads | 100 | 3725 s (1.0 h) | 42.2 s | — | [2] |"
            ),
            "{text}"
        );
        assert!(
            text.contains("Training time over the 4 jobs: 14900 s (4.1 h)."),
            "{text}"
        );
        let mut skipped = job(4, None, None);
        skipped.skipped = Some("diverged".into());
        skipped.train_wall_s = None;
        assert!(jobs_section(&[skipped]).contains("| skipped: diverged |"));
    }

    #[test]
    fn jobs_table_keeps_one_row_per_job_whatever_a_record_holds() {
        let mut odd = job(0, Some("Xeon | AVX\nline two"), None);
        odd.skipped = Some("nan at | epoch 3\r\nstopped".into());
        odd.train_wall_s = None;
        odd.label = "fno|b".into();
        let text = jobs_section(&[odd]);
        assert!(
            text.contains("- CPU [1]: Xeon \\| AVX line two\n"),
            "{text}"
        );
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("| 0 ")).collect();
        assert_eq!(rows.len(), 1, "{text}");
        assert_eq!(
            rows[0],
            "| 0 | fno\\|b | 7 | Cpu, 1 thread | 100 | skipped: nan at \\| epoch 3  stopped | 42.2 s | — | [1] |"
        );
        // Every row of the table has the header's ten `|` that are not escaped.
        let bars = |l: &str| l.replace("\\|", "").matches('|').count();
        assert!(
            text.lines()
                .filter(|l| l.starts_with('|'))
                .all(|l| bars(l) == 10),
            "{text}"
        );
        assert_eq!(cell("a|b\tc"), "a\\|b c");
    }

    #[test]
    fn chains_order_only_separated_ranges_and_count_agreeing_seeds() {
        let group = |label: &str, vals: &[f64]| -> Vec<Row> {
            vals.iter().map(|&v| row(label, v)).collect()
        };
        let a = group("a", &[0.10, 0.12, 0.11]);
        let b = group("b", &[0.20, 0.30, 0.25]);
        let c = group("c", &[0.29, 0.22, 0.40]);
        let text = chain(&[&c, &a, &b], &|r| Some(r.val_stat()));
        assert_eq!(
            text,
            "a 11.00% [10.00–12.00] < (3/3) b 25.00% [20.00–30.00] ≈ (2/3) c 29.00% [22.00–40.00]"
        );
        assert_eq!(verdict_words(&a), "generalises in 3/3 seeds");
    }
}
