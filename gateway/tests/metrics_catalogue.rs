//! The metrics catalogue in the README is kept true against the live exporter: every
//! `bsn_gateway_*` family a working gateway exports is listed with its type and labels,
//! every listed family is one the code defines, and names follow Prometheus conventions.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Gateway;
use serde_json::json;

struct Row {
    kind: String,
    labels: BTreeSet<String>,
}

fn readme_catalogue() -> BTreeMap<String, Row> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README has a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `bsn_gateway_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let labels = cells[3]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        rows.insert(
            name,
            Row {
                kind: cells[2].to_string(),
                labels,
            },
        );
    }
    assert!(rows.len() >= 15, "only {} rows read", rows.len());
    rows
}

#[test]
fn the_readme_catalogue_matches_the_live_exporter() {
    let g = Gateway::start_dev();
    // Touch every path that records something: keys, signing, verification (valid and not).
    let key = g.create_key("metrics", "ecdsa-p256");
    let id = key["id"].as_str().unwrap();
    let r = g.post(
        &format!("/v1/keys/{id}/sign"),
        json!({"digest": format!("0x{}", "11".repeat(32)), "format": "raw"}),
    );
    assert_eq!(r.status, 200);
    let sig = r.body["signature"].as_str().unwrap();
    let r = g.post(
        "/v1/verify",
        json!({"items": [
            {"algorithm": "ecdsa-p256", "key_id": id, "digest": format!("0x{}", "11".repeat(32)), "signature": sig, "format": "raw"},
            {"algorithm": "ecdsa-p256", "key_id": "00", "digest": format!("0x{}", "11".repeat(32)), "signature": sig},
        ]}),
    );
    assert_eq!(r.status, 200);
    let scrape = g.call("GET", "/metrics", None, None);
    let text = scrape.body.as_str().expect("text exposition").to_string();

    let catalogue = readme_catalogue();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            types.insert(
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            );
        }
    }
    let exported: BTreeSet<&String> = types
        .keys()
        .filter(|n| n.starts_with("bsn_gateway_"))
        .collect();
    assert!(exported.len() >= 12, "{exported:?}");
    for name in &exported {
        let row = catalogue
            .get(*name)
            .unwrap_or_else(|| panic!("{name} is exported but not in the README catalogue"));
        assert_eq!(row.kind, types[*name], "{name}: type");
    }
    // Labels on every sample are ones the catalogue names.
    for line in text.lines().filter(|l| l.starts_with("bsn_gateway_")) {
        let (series, _) = line.rsplit_once(' ').unwrap();
        let (metric, labels) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                metric
                    .strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(metric);
        let row = &catalogue[family];
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let label = pair.split('=').next().unwrap().trim();
            if label != "le" {
                assert!(
                    row.labels.contains(label),
                    "{family}: label {label} not in the catalogue"
                );
            }
        }
    }
    // Every catalogue entry is a name the code defines, and follows the conventions.
    let source = include_str!("../src/metrics.rs");
    for (name, row) in &catalogue {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{name} is not defined in metrics.rs"
        );
        match row.kind.as_str() {
            "counter" => assert!(name.ends_with("_total"), "{name}: counters end in _total"),
            "histogram" => assert!(
                name.ends_with("_seconds") || name.ends_with("_items"),
                "{name}: histograms carry their unit"
            ),
            "gauge" => assert!(!name.ends_with("_total"), "{name}: a gauge is not a _total"),
            other => panic!("{name}: unknown type {other}"),
        }
    }
}
