//! The whole study, end to end, on a tiny protocol: data, training, evaluation, report.

mod common;

use candle_core::Device;
use common::tiny;
use no_eval::report::StudyResults;
use no_eval::study::run;

#[test]
fn tiny_study_writes_a_well_formed_report() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny();
    let results = run(&cfg, "tiny", &Device::Cpu, dir.path(), false).unwrap();
    let labels: Vec<&str> = results.models.iter().map(|m| m.label.as_str()).collect();
    assert!(labels.starts_with(&["fno", "don+aug"]), "{labels:?}");
    assert_eq!(results.models.len() + results.skipped.len(), 3);

    let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(report.starts_with("# Translation benchmark: `tiny` protocol"));
    let (main, after) = report.split_once("## Ranking").unwrap();
    let table: Vec<&str> = main.lines().filter(|l| l.starts_with("| ")).collect();
    // Header, then one row per model, then the solver row.
    assert_eq!(table.len(), 1 + results.models.len() + 1, "{report}");
    // The jobs table: header, then one row per job (a skipped one included).
    let (_, jobs) = after.split_once("## Jobs").unwrap();
    let job_rows = jobs.lines().filter(|l| l.starts_with("| ")).count();
    assert_eq!(job_rows, 1 + cfg.jobs().len(), "{report}");
    for l in &table {
        assert_eq!(
            l.matches('|').count(),
            15,
            "row with a wrong number of cells: {l}"
        );
    }
    assert!(report.contains("## Ranking") && report.contains("generalise"));
    assert!(report.contains("don+aug** (delay augmentation)"));

    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + results.models.len());
    let cols = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == cols));
    let epochs = std::fs::read_to_string(dir.path().join("epochs.csv")).unwrap();
    let total_epochs: usize = results.models.iter().map(|m| m.epochs.len()).sum();
    assert_eq!(epochs.lines().count(), 1 + total_epochs);
    assert!(results.models.iter().all(|m| m.epochs.len()
        == cfg
            .models
            .iter()
            .find(|s| s.label == m.label)
            .unwrap()
            .train
            .epochs));

    let back: StudyResults =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    // serde_json parses floats to within one ulp, so compare structure and values loosely.
    assert_eq!(back.models.len(), results.models.len());
    for (a, b) in back.models.iter().zip(&results.models) {
        assert_eq!(
            (&a.label, a.params, a.epochs.len()),
            (&b.label, b.params, b.epochs.len())
        );
        assert!(
            (a.test[0].rel_l2.mean - b.test[0].rel_l2.mean).abs()
                <= 1e-12 * b.test[0].rel_l2.mean.abs()
        );
    }
    assert_eq!(back.skipped, results.skipped);

    for m in &results.models {
        assert!(m.train[0].rel_l2.mean.is_finite() && m.test[1].rel_l2.mean.is_finite());
        assert_eq!(m.test_by_onset.len(), 6);
        assert_eq!(m.time_curve.points.len(), 2);
        assert_eq!(
            m.time_curve.at(0).unwrap().channels[0].max,
            0.0,
            "no shift, no error"
        );
        assert!(m.latency.at(1).is_some() && m.latency.at(32).is_some());
        assert!(no_eval::study::model_dir(dir.path(), &m.label, m.seed)
            .join("best.safetensors")
            .exists());
    }
    // FNO accepts the finer grid, DeepONet does not.
    assert!(results.models[0].fine_grid.is_some());
    assert!(results.models[1].fine_grid.is_none());
    // The solver is equivariant to delays up to the stimulus raster: far below a model's error.
    assert!(results.solver_time_curve.at(0).unwrap().channels[0].max == 0.0);
    for f in [
        "maps_sample0.png",
        "training_curves.png",
        "equivariance.png",
        "error_vs_onset.png",
    ] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{f}");
    }
}
