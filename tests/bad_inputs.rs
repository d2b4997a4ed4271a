//! The bad-input suite (issue 20): every example program and the public loaders fed
//! malformed, extreme, contradictory or unusual-but-valid input. Each case is a row of a
//! table (`tests/bad_inputs/cases_*.rs`) with its expected outcome: a clean error whose
//! message names the problem, or success with finite outputs. A panic, an abort (a signal),
//! a hang (past the case's time limit), a success where an error was due, or an error that
//! does not name the problem fails the case.
//!
//! ```text
//! cargo build --examples && cargo test --test bad_inputs -- --nocapture
//! BAD_INPUT_EXAMPLES=target/release/examples cargo test --release --test bad_inputs
//! BAD_INPUT_FILTER=infer/ cargo test --test bad_inputs -- --nocapture   # a subset
//! BAD_INPUT_LIST=1 cargo test --test bad_inputs case_table -- --nocapture  # the table
//! ```
//! `BAD_INPUT_THREADS` sets how many cases run at once (default 3).

#[path = "bad_inputs/atomic.rs"]
mod atomic;
#[path = "bad_inputs/cases_lib.rs"]
mod cases_lib;
#[path = "bad_inputs/cases_models.rs"]
mod cases_models;
#[path = "bad_inputs/cases_solver.rs"]
mod cases_solver;
#[path = "bad_inputs/cases_tools.rs"]
mod cases_tools;
#[path = "bad_inputs/files.rs"]
mod files;
#[path = "bad_inputs/fixtures.rs"]
mod fixtures;
#[path = "bad_inputs/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};

use harness::Case;

/// The required size of the table.
const MIN_CASES: usize = 250;

/// Every case of the suite, in a fixed order.
fn all_cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(cases_solver::fhn_solve());
    v.extend(cases_solver::generate_dataset());
    v.extend(cases_models::infer());
    v.extend(cases_models::train());
    v.extend(cases_models::import_neuralop());
    v.extend(cases_tools::benchmark());
    v.extend(cases_tools::model_timing());
    v.extend(cases_tools::device_check());
    v.extend(cases_tools::custom_model());
    v.extend(cases_lib::all());
    v.extend(atomic::all());
    v
}

#[test]
fn case_table_is_large_unique_and_covers_every_class() {
    let cases = all_cases();
    let mut names = BTreeSet::new();
    for c in &cases {
        assert!(
            names.insert(c.name.clone()),
            "duplicate case name {}",
            c.name
        );
    }
    let classes: BTreeSet<&str> = cases.iter().map(|c| c.class).collect();
    for class in [
        "size", "work", "nan", "resume", "shards", "typo", "atomic", "corrupt", "small", "user",
        "numbers", "valid",
    ] {
        assert!(classes.contains(class), "no case of class {class}");
    }
    if std::env::var_os("BAD_INPUT_LIST").is_some() {
        for c in &cases {
            println!("{:9} {:60} {}", c.class, c.name, c.describe());
        }
    }
    println!("{} cases", cases.len());
    assert!(
        cases.len() >= MIN_CASES,
        "{} cases, at least {MIN_CASES} wanted",
        cases.len()
    );
}

#[test]
fn bad_input_suite() {
    let filter = std::env::var("BAD_INPUT_FILTER").unwrap_or_default();
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| c.name.contains(&filter))
        .collect();
    let workers = std::env::var("BAD_INPUT_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let root = tempfile::Builder::new()
        .prefix("bad-inputs-")
        .tempdir()
        .expect("scratch dir");
    let start = std::time::Instant::now();
    // Shared by every case for the rest of the run.
    let fixtures: &'static fixtures::Fixtures =
        Box::leak(Box::new(fixtures::Fixtures::make(root.path())));
    eprintln!(
        "fixtures ready in {:.1} s; running {} cases on {workers} threads",
        start.elapsed().as_secs_f64(),
        cases.len()
    );
    let failures = harness::run_all(&cases, fixtures, root.path(), workers);
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &failures {
        *by_kind.entry(f.kind).or_default() += 1;
        println!(
            "FAILED {:16} [{}] {}: {}",
            f.kind,
            f.class,
            f.name,
            f.detail.replace('\n', " ")
        );
    }
    println!("by kind: {by_kind:?}");
    println!(
        "{} passed, {} failed ({} cases in {:.0} s)",
        cases.len() - failures.len(),
        failures.len(),
        cases.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed (list above)",
        failures.len(),
        cases.len()
    );
}
