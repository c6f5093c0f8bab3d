//! The metrics catalogue in the README is kept true against the live exporter: every
//! `bsn_gateway_*` family a working gateway exports is listed with its type and labels,
//! every listed family is one the code defines, and names follow Prometheus conventions.
//! The shipped Prometheus config, alert rules and Grafana dashboard are checked by promtool
//! and held to the same catalogue: they query only metrics and labels the gateway exports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
fn a_fresh_gateway_exports_every_catalogue_metric_at_zero() {
    // A ledger whose node is down: its series must be there all the same.
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_dev_with(
        dir.path(),
        &["--ledger".into(), "fab=http+http://127.0.0.1:1".into()],
    );
    let text = g
        .call("GET", "/metrics", None, None)
        .body
        .as_str()
        .unwrap()
        .to_string();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in readme_catalogue().keys() {
        assert!(
            exported.contains(name.as_str()),
            "{name} is missing from a fresh scrape"
        );
    }
    for series in [
        "bsn_gateway_forward_attempts_total{ledger=\"fab\",node=\"http://127.0.0.1:1\",result=\"delivered\"} 0",
        "bsn_gateway_transactions_rejected_total{ledger=\"fab\",reason=\"replayed\"} 0",
        "bsn_gateway_verify_total{algorithm=\"ecdsa-p256\",result=\"valid\"} 0",
        "bsn_gateway_outbox_fsync_duration_seconds_count 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    let lint = promtool(&["check", "metrics"], Some(&text));
    assert!(
        lint.0,
        "promtool check metrics on a fresh scrape: {}",
        lint.1
    );
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
    let lint = promtool(&["check", "metrics"], Some(&text));
    assert!(
        lint.0,
        "promtool check metrics on a live scrape: {}",
        lint.1
    );

    // The dev token is SoftHSM2, whose profile signs with a session copy: one key signed.
    assert!(
        text.lines()
            .any(|l| l == "bsn_gateway_hsm_session_copies 1"),
        "one session copy after one key signed"
    );

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

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs promtool (Debian package prometheus, installed by deploy/install-deps.sh).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; deploy/install-deps.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alert_rules_fire_as_specified() {
    let dir = deploy().join("prometheus");
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    for args in [
        vec!["check", "config", &path("prometheus.yml")],
        vec!["check", "rules", &path("bsn-gateway-alerts.yml")],
        // Each alert fires on the series it is for and not on healthy ones beside them.
        vec!["test", "rules", &path("bsn-gateway-alerts.test.yml")],
    ] {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        let (ok, out) = promtool(&args, None);
        assert!(ok, "promtool {args:?}: {out}");
    }
    // Every alert the issue names has a rule, and every rule a unit test.
    let rules = std::fs::read_to_string(dir.join("bsn-gateway-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("bsn-gateway-alerts.test.yml")).unwrap();
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    for wanted in [
        "BsnGatewayDown",
        "BsnGatewayHsmSessionsExhausted",
        "BsnGatewaySignErrorRate",
        "BsnGatewayVerifyQueueSaturated",
        "BsnGatewayOutboxGrowing",
        "BsnGatewayLedgerNodeDown",
        "BsnGatewayOutboxFsyncSlow",
    ] {
        assert!(names.contains(&wanted), "no alert {wanted}");
    }
    for name in &names {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "alert {name} has no promtool unit test"
        );
    }
}

/// The metric names and label names a PromQL expression refers to.
fn promql_refs(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    let mut in_braces = false;
    let mut grouping = 0usize; // inside by (...) / on (...) / without (...) / ignoring (...)
    let mut last_word = String::new();
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            // Skip string literals (label values, regexes).
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if ident(c) && !(c.is_ascii_digit()) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let rest = expr[i..].trim_start();
            if in_braces || grouping > 0 {
                labels.insert(word.to_string());
            } else if word.starts_with("bsn_gateway_") || word == "up" {
                metrics.insert(word.to_string());
            }
            last_word = word.to_string();
            let _ = rest;
            continue;
        }
        match c {
            b'{' => in_braces = true,
            b'}' => in_braces = false,
            b'(' if ["by", "on", "without", "ignoring"].contains(&last_word.as_str()) => {
                grouping += 1
            }
            b')' if grouping > 0 => grouping -= 1,
            _ => {}
        }
        if !c.is_ascii_whitespace() {
            last_word.clear();
        }
        i += 1;
    }
    (metrics, labels)
}

/// Checks one expression (and the labels its legend or annotations use) against the
/// catalogue: every metric is exported, every label is one those metrics carry.
fn check_expr(
    origin: &str,
    expr: &str,
    extra_labels: &BTreeSet<String>,
    catalogue: &BTreeMap<String, Row>,
) -> BTreeSet<String> {
    let (metrics, labels) = promql_refs(expr);
    assert!(!metrics.is_empty(), "{origin}: no metric in {expr:?}");
    let mut known: BTreeSet<String> = ["instance", "job", "le"].map(String::from).into();
    let mut families = BTreeSet::new();
    for m in &metrics {
        if m == "up" {
            continue;
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                m.strip_suffix(s)
                    .filter(|f| catalogue.get(*f).is_some_and(|r| r.kind == "histogram"))
            })
            .unwrap_or(m);
        let row = catalogue
            .get(family)
            .unwrap_or_else(|| panic!("{origin}: {m} is not a metric the gateway exports"));
        if row.kind == "histogram" {
            assert_ne!(
                family, m,
                "{origin}: query {m}_bucket, not the histogram name"
            );
        }
        known.extend(row.labels.iter().cloned());
        families.insert(family.to_string());
    }
    for l in labels.iter().chain(extra_labels) {
        assert!(
            known.contains(l),
            "{origin}: label {l} is not on {metrics:?} (they carry {known:?})"
        );
    }
    families
}

/// `{{name}}` placeholders in a Grafana legend.
fn legend_labels(legend: &str) -> BTreeSet<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|p| p.split_once("}}"))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(deploy().join("grafana/bsn-gateway.json")).unwrap();
    serde_json::from_str(&text).expect("dashboard is JSON")
}

/// Every panel target: (panel title, expr, legend format).
fn dashboard_targets(dash: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                title.to_string(),
                t["expr"].as_str().unwrap().to_string(),
                t["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// A dashboard expression as Grafana sends it, with all instances and jobs selected.
fn expand(expr: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$instance", ".*")
        .replace("$job", ".*")
}

/// Kills the Prometheus server a test started.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus (the Debian package's server) scrapes a gateway that has served
/// nothing yet, and every panel of the shipped dashboard gets data from it: a new
/// appliance shows zeros, not "No data".
#[test]
fn every_dashboard_panel_has_data_from_a_fresh_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_dev_with(
        &dir.path().join("gw"),
        &["--ledger".into(), "fab=http+http://127.0.0.1:1".into()],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: bsn-gateway\n    static_configs:\n      - targets: [\"{}\"]\n",
            g.ops
        ),
    )
    .unwrap();
    let _prometheus = Server(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus; deploy/install-deps.sh installs it)"),
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let query = |q: &str| -> Option<serde_json::Value> {
        let mut r = agent
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query("query", q)
            .call()
            .ok()?;
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
        assert_eq!(v["status"], "success", "{q}: {v}");
        Some(v["data"]["result"].clone())
    };
    // Enough scrapes for a rate over the panels' interval.
    let started = std::time::Instant::now();
    loop {
        let ready = query("count_over_time(up[1m]) >= 4")
            .is_some_and(|r| r.as_array().is_some_and(|a| !a.is_empty()));
        if ready {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "Prometheus did not scrape the gateway 4 times in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let dash = dashboard();
    let targets = dashboard_targets(&dash);
    let mut empty = Vec::new();
    for (title, expr, _) in &targets {
        let result = query(&expand(expr, "1m")).expect("a query answered");
        if result.as_array().is_none_or(|a| a.is_empty()) {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data on a fresh gateway:\n{}",
        empty.join("\n")
    );
    let variables = dash["templating"]["list"].as_array().unwrap();
    for q in variables
        .iter()
        .filter_map(|v| v["query"]["query"].as_str())
    {
        let (metric, _) = q
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .unwrap();
        let result = query(&expand(metric, "1m")).unwrap();
        assert!(!result.as_array().unwrap().is_empty(), "variable {q}");
    }
    assert!(targets.len() >= 30);
}

#[test]
fn alerts_and_dashboard_query_only_exported_metrics_and_labels() {
    let catalogue = readme_catalogue();
    let mut used = BTreeSet::new();

    // Alert rules: each rule's expr, and the $labels its annotations use.
    let rules =
        std::fs::read_to_string(deploy().join("prometheus/bsn-gateway-alerts.yml")).unwrap();
    let mut count = 0;
    for rule in rules.split("- alert: ").skip(1) {
        let name = rule.lines().next().unwrap().trim();
        let mut lines = rule
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("expr:"));
        let first = lines.next().unwrap_or_else(|| panic!("{name}: no expr"));
        let inline = first.trim_start().trim_start_matches("expr:").trim();
        let expr = if inline == "|" {
            lines
                .take_while(|l| l.starts_with("          ") || l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            inline.to_string()
        };
        let annotation_labels: BTreeSet<String> = rule
            .split("$labels.")
            .skip(1)
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect();
        used.extend(check_expr(name, &expr, &annotation_labels, &catalogue));
        count += 1;
    }
    assert!(count >= 7, "{count} alert rules read");

    // The Grafana dashboard: every target's expr and legend, and the variables' queries.
    let dash = dashboard();
    let mut exprs = Vec::new();
    for (title, expr, legend) in dashboard_targets(&dash) {
        used.extend(check_expr(
            &title,
            &expr,
            &legend_labels(&legend),
            &catalogue,
        ));
        exprs.push(expr);
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(metric, label)| {
                    let label = label.trim().trim_end_matches(')').to_string();
                    (metric.to_string(), BTreeSet::from([label]))
                })
                .unwrap_or_else(|| panic!("variable query {q:?} is not label_values(m, l)"));
            check_expr("variable", &inner.0, &inner.1, &catalogue);
        }
    }
    assert!(exprs.len() >= 30, "{} dashboard queries", exprs.len());

    // The dashboard's PromQL parses: promtool checks it as recording rules, with Grafana's
    // variables replaced by what they expand to.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = expand(e, "5m");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", file.to_str().unwrap()], None);
    assert!(ok, "dashboard PromQL: {out}");

    // Between them, the dashboard and the alerts cover every part of the gateway.
    for part in [
        "http",
        "hsm",
        "verify",
        "outbox",
        "forward",
        "ledger",
        "transactions",
    ] {
        assert!(
            used.iter()
                .any(|f| f.starts_with(&format!("bsn_gateway_{part}"))),
            "nothing charts or alerts on bsn_gateway_{part}_*"
        );
    }
}
