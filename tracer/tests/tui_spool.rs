//! The spool behind `--record` and `e`: what it writes is a complete schema-1 log whether or
//! not the stream has reached its own summary.
// Tests may unwrap: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use tracer::{
    events::Record,
    export::Format,
    tui::{
        self, check,
        model::Model,
        source::{Spool, partial_summary},
    },
};

fn records(name: &str) -> Vec<Record> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tui")
        .join(name);
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| Record::parse(l).unwrap())
        .collect()
}

fn parse_file(p: &std::path::Path) -> Vec<Record> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| Record::parse(l).unwrap())
        .collect()
}

#[test]
fn export_mid_stream_adds_a_partial_summary_and_not_after_the_real_one() {
    let dir = std::env::temp_dir().join(format!("tracer-tui-spool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recs = records("lost.jsonl");
    let Record::Header(h) = &recs[0] else {
        panic!("no header")
    };
    let mut checker = check::for_header(h);
    let mut model = Model::new();
    // No --record: an unlinked temporary spool.
    let mut spool = Spool::create(None).unwrap();
    let half = recs.len() / 2;
    for (i, r) in recs[..half].iter().enumerate() {
        tui::feed(&mut model, checker.as_mut(), i as u64 + 1, r);
        spool.write(r);
    }
    let first = dir.join("first.jsonl");
    let job = spool
        .export(
            first.clone(),
            partial_summary(&model, "test"),
            Format::Jsonl,
            None,
        )
        .unwrap();
    assert_eq!(job.join().unwrap().unwrap().0, first);
    let got = parse_file(&first);
    assert_eq!(got.len(), half + 1);
    assert_eq!(got[..half], recs[..half]);
    let Record::Summary(s) = &got[half] else {
        panic!("last is not a summary: {:?}", got[half])
    };
    assert_eq!(s.events, model.events);
    assert_eq!(s.lost, model.lost);
    assert_eq!(s.extra.get("partial"), Some(&serde_json::Value::Bool(true)));
    // The validator takes the export as a complete log (the lost events make it inconclusive).
    let report = tracer::validate::validate_reader(
        std::fs::File::open(&first).unwrap(),
        tracer::validate::Options::default(),
    )
    .unwrap();
    assert_eq!(report.verdict.as_str(), "inconclusive");

    for (i, r) in recs[half..].iter().enumerate() {
        tui::feed(&mut model, checker.as_mut(), (half + i) as u64 + 1, r);
        spool.write(r);
    }
    let second = dir.join("second.jsonl");
    spool
        .export(
            second.clone(),
            partial_summary(&model, "test"),
            Format::Jsonl,
            None,
        )
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    // The stream's own summary came through: nothing is added, the export is the stream.
    assert_eq!(parse_file(&second), recs);
    // An existing file is never overwritten.
    assert!(
        spool
            .export(second, partial_summary(&model, "test"), Format::Jsonl, None)
            .unwrap()
            .join()
            .unwrap()
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
