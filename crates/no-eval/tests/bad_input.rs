//! Bad input to the study and the report: unknown fields (with the closest valid name),
//! invalid values, the study-versus-protocol error, atomic writes and non-finite metrics.

use no_eval::latency::{summarize_times, LatencyConfig, LatencyReport};
use no_eval::metrics::{summarize, FieldSummary};
use no_eval::report::plots::FigureData;
use no_eval::report::{FixedShifts, ModelResult, StudyResults, Variant};
use no_eval::strict::{persist_with, write_atomic};
use no_eval::study::{EvalConfig, StudyConfig};
use no_eval::translation::{EquivarianceCurve, ShiftAxis};
use no_eval::EvalError;
use serde_json::{json, Value};

/// The quick study as JSON, with `edit` applied.
fn study_json(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = serde_json::to_value(StudyConfig::quick()).unwrap();
    edit(&mut v);
    v.to_string()
}

/// The error message of `StudyConfig::from_json` on the edited quick study.
fn study_error(edit: impl FnOnce(&mut Value)) -> String {
    StudyConfig::from_json(&study_json(edit))
        .expect_err("the study should be refused")
        .to_string()
}

/// Renames key `from` of the object at `pointer` to `to`.
fn rename(v: &mut Value, pointer: &str, from: &str, to: &str) {
    let obj = v.pointer_mut(pointer).unwrap().as_object_mut().unwrap();
    let value = obj.remove(from).unwrap();
    obj.insert(to.into(), value);
}

#[test]
fn the_quick_study_round_trips_through_from_json() {
    let text = study_json(|_| {});
    assert_eq!(StudyConfig::from_json(&text).unwrap(), StudyConfig::quick());
    StudyConfig::full().validate().unwrap();
}

#[test]
fn unknown_fields_name_the_config_and_suggest_the_closest_field() {
    let cases: [(&str, &str, &str, &str); 5] = [
        ("", "seed", "sed", "StudyConfig"),
        (
            "/eval",
            "equivariance_samples",
            "equivariance_sample",
            "EvalConfig at `eval`",
        ),
        (
            "/eval/latency",
            "repeats",
            "repeat",
            "LatencyConfig at `eval.latency`",
        ),
        (
            "/models/0",
            "variant",
            "varient",
            "ModelSpec at `models[0]`",
        ),
        (
            "/protocol",
            "pulse_width",
            "pulse_widht",
            "Protocol at `protocol`",
        ),
    ];
    for (pointer, good, typo, what) in cases {
        let msg = study_error(|v| rename(v, pointer, good, typo));
        assert!(msg.contains(what), "{msg}");
        assert!(
            msg.contains(&format!("unknown field `{typo}`; did you mean `{good}`?")),
            "{msg}"
        );
    }
}

#[test]
fn a_study_with_a_bad_field_is_not_reported_as_a_protocol() {
    let msg = study_error(|v| rename(v, "/eval", "equivariance_samples", "equivariance_sample"));
    assert_eq!(
        msg.split(" (expected").next().unwrap(),
        "invalid EvalConfig at `eval`: unknown field `equivariance_sample`; did you mean `equivariance_samples`?"
    );
    assert!(!msg.contains("Protocol"), "{msg}");
    // A protocol-only file with a typo is reported as a protocol.
    let mut p = serde_json::to_value(fhn_solver::Protocol::quick()).unwrap();
    rename(&mut p, "", "pulse_width", "pulse_widht");
    let msg = StudyConfig::from_json(&p.to_string())
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with(
            "invalid Protocol: unknown field `pulse_widht`; did you mean `pulse_width`?"
        ),
        "{msg}"
    );
    // A protocol-only file still works.
    let p = serde_json::to_value(fhn_solver::Protocol::quick()).unwrap();
    let cfg = StudyConfig::from_json(&p.to_string()).unwrap();
    assert_eq!(cfg.protocol, fhn_solver::Protocol::quick());
    // Not JSON, or not an object.
    assert!(StudyConfig::from_json("{")
        .unwrap_err()
        .to_string()
        .contains("not JSON"));
    assert!(StudyConfig::from_json("[1]")
        .unwrap_err()
        .to_string()
        .contains("JSON object"));
}

#[test]
fn a_study_file_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("study.json");
    std::fs::write(
        &path,
        study_json(|v| rename(v, "/eval", "eval_batch", "eval_bach")),
    )
    .unwrap();
    let msg = StudyConfig::by_name_or_path(path.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("EvalConfig at `eval` in "), "{msg}");
    assert!(msg.contains("did you mean `eval_batch`?"), "{msg}");
}

#[test]
fn invalid_values_are_refused_with_the_field_named() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!(0),
            "/eval/equivariance_samples",
            "`equivariance_samples` = 0",
        ),
        (json!([0.7, 0.3]), "/eval/equivariance_x0_range", "lo ≤ hi"),
        (json!(0), "/eval/eval_batch", "`eval_batch` = 0"),
        (json!([1, 99]), "/eval/fine_grid", "`fine_grid` = [1, 99]"),
        (json!(0), "/eval/latency/repeats", "`repeats` = 0"),
        (
            json!([]),
            "/eval/latency/batch_sizes",
            "`batch_sizes` is empty",
        ),
        (
            json!([1, 0]),
            "/eval/latency/batch_sizes",
            "every batch size must be at least 1",
        ),
        (
            json!(-1.0),
            "/augment_max_delay",
            "`augment_max_delay` = -1",
        ),
        (json!([]), "/models", "`models` is empty"),
        (json!("fno"), "/models/0/label", "used twice"),
        (json!(" "), "/models/0/label", "`label` is empty"),
        (json!(0), "/models/0/train/epochs", "train.epochs = 0"),
        (
            json!(0),
            "/models/0/train/batch_size",
            "train.batch_size = 0",
        ),
        (json!(0), "/protocol/test/n_samples", "test.n_samples"),
    ];
    for (value, pointer, expected) in cases {
        let msg = study_error(|v| *v.pointer_mut(pointer).unwrap() = value.clone());
        assert!(msg.contains(expected), "{pointer} = {value}: {msg}");
    }
}

#[test]
fn non_finite_shifts_are_refused() {
    for edit in [
        |e: &mut EvalConfig| e.time_shifts.push(f64::NAN),
        |e: &mut EvalConfig| e.space_shifts.push(f64::INFINITY),
        |e: &mut EvalConfig| e.fixed_time_shift = f64::NAN,
        |e: &mut EvalConfig| e.equivariance_x0_range = (f64::NAN, 0.5),
    ] {
        let mut eval = EvalConfig::quick();
        edit(&mut eval);
        let msg = eval.validate().unwrap_err().to_string();
        assert!(msg.starts_with("invalid EvalConfig at `eval`"), "{msg}");
        assert!(msg.contains("finite"), "{msg}");
    }
}

#[test]
fn latency_configs_and_times_are_checked() {
    let ok = LatencyConfig::default();
    assert!(ok.validate().is_ok());
    let zero = LatencyConfig {
        repeats: 0,
        ..LatencyConfig::default()
    };
    assert!(zero.validate().is_err());
    assert!(summarize_times(1, &[]).is_err());
    assert!(
        summarize_times(1, &[0.0, 0.0]).is_err(),
        "infinite throughput"
    );
    assert!(summarize_times(1, &[f64::NAN]).is_err());
    assert!(summarize_times(1, &[0.001]).is_ok());
}

#[test]
fn unknown_fields_of_the_results_are_refused() {
    let results = tiny_results(0.1);
    let mut v = serde_json::to_value(&results).unwrap();
    v.as_object_mut()
        .unwrap()
        .insert("skiped".into(), json!([]));
    let e = serde_json::from_value::<StudyResults>(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `skiped`"), "{e}");
    let back: StudyResults =
        serde_json::from_value(serde_json::to_value(&results).unwrap()).unwrap();
    assert_eq!(back, results);
}

fn field(v: f64) -> FieldSummary {
    let s = summarize(&[v, 2.0 * v]).unwrap();
    FieldSummary {
        rel_l2: s,
        rel_l1: s,
        rel_h1: s,
        max_abs: s,
    }
}

fn empty_curve(axis: ShiftAxis) -> EquivarianceCurve {
    EquivarianceCurve {
        axis,
        points: Vec::new(),
    }
}

/// A one-model result whose test mean relative L2 of v is `test_v` (and 2 × that max).
fn tiny_results(test_v: f64) -> StudyResults {
    let mut test = field(0.1);
    test.rel_l2.mean = test_v;
    let model = ModelResult {
        label: "fno".into(),
        architecture: "fno".into(),
        variant: Variant::Paper,
        input_sampling: None,
        replicate: 0,
        seed: 0,
        config: json!({"model": "fno"}),
        params: no_models::ParamCount { numel: 1, real: 1 },
        train: vec![field(0.1), field(0.1)],
        validation: vec![field(0.1), field(0.1)],
        test: vec![test, field(0.1)],
        test_by_onset: Vec::new(),
        fine_grid: None,
        time_curve: empty_curve(ShiftAxis::Time),
        space_curve: empty_curve(ShiftAxis::Space),
        train_wall_s: 1.0,
        epochs: Vec::new(),
        latency: LatencyReport {
            points: vec![summarize_times(1, &[0.001]).unwrap()],
            peak_rss_bytes: None,
        },
    };
    StudyResults {
        protocol_name: "tiny".into(),
        study_config: json!({}),
        device: "Cpu".into(),
        grid: (8, 8),
        samples: (1, 1, 1),
        fixed_shifts: FixedShifts {
            time_steps: 0,
            time: 0.0,
            space_steps: 0,
            space: 0.0,
        },
        solver_time_curve: empty_curve(ShiftAxis::Time),
        solver_space_curve: empty_curve(ShiftAxis::Space),
        models: vec![model],
        aggregates: Vec::new(),
        skipped: Vec::new(),
        phases: Vec::new(),
        jobs: Vec::new(),
    }
}

fn no_figures() -> FigureData {
    FigureData {
        maps: Vec::new(),
        t_end: 40.0,
        length: 1.0,
    }
}

#[test]
fn non_finite_metrics_are_errors_naming_the_model_and_the_figure() {
    let results = tiny_results(f64::NAN);
    let e = results.models[0].check_finite().unwrap_err();
    assert!(matches!(e, EvalError::NonFinite { .. }));
    assert_eq!(
        e.to_string(),
        "model `fno`: test rel_l2 mean of v is not finite (NaN)"
    );
    let mut slow = tiny_results(0.1);
    slow.models[0].latency.points[0].throughput = f64::INFINITY;
    assert_eq!(
        slow.models[0].check_finite().unwrap_err().to_string(),
        "model `fno`: latency throughput at batch 1 is not finite (inf)"
    );
    assert!(tiny_results(0.1).models[0].check_finite().is_ok());
}

#[test]
fn a_report_with_a_nan_leaves_the_previous_report_intact() {
    let dir = tempfile::tempdir().unwrap();
    let written = tiny_results(0.1)
        .write_all(dir.path(), &no_figures())
        .unwrap();
    assert!(written.iter().any(|p| p.ends_with("report.md")));
    let before = std::fs::read(dir.path().join("results.json")).unwrap();
    let report = std::fs::read(dir.path().join("report.md")).unwrap();
    assert!(tiny_results(f64::NAN)
        .write_all(dir.path(), &no_figures())
        .is_err());
    assert_eq!(
        std::fs::read(dir.path().join("results.json")).unwrap(),
        before
    );
    assert_eq!(std::fs::read(dir.path().join("report.md")).unwrap(), report);
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_writer_that_fails_midway_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.csv");
    write_atomic(&path, b"old").unwrap();
    let failed = persist_with(&path, |file, _| {
        use std::io::Write;
        file.write_all(b"half of the new").unwrap();
        Err(EvalError::io(
            "results.csv",
            std::io::Error::other("disk full"),
        ))
    });
    assert!(failed.is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    write_atomic(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn an_output_under_a_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let e = write_atomic(&file.join("report.md"), b"r").unwrap_err();
    assert!(matches!(e, EvalError::Io { .. }), "{e}");
    assert!(tiny_results(0.1).write_all(&file, &no_figures()).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}
