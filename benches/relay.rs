//! Micro-benchmarks of the hot path, each beside a baseline measured in the
//! same run: the ratio is the figure (BENCHMARKS.md).
//!
//! - parse: our typed payload parsing vs parsing into an untyped `serde_json::Value`;
//! - conditions: the condition engine vs hand-written label comparisons;
//! - route: filtering, recomputing and serializing per receiver vs serializing
//!   the whole payload once per receiver;
//! - spool: a durable commit of a batch (one frame appended to the log) vs writing the same bytes to a
//!   file and fsyncing it;
//! - sign: a Standard Webhooks signature of a 10-alert body vs serializing that
//!   body (what every attempt already costs);
//! - render: each preset's body for a 10-alert notification vs serializing the
//!   notification (what the `alertmanager` format costs).

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};

use alert_relay::alert::{LabelSet, Notification};
use alert_relay::config::{Config, Receiver};
use alert_relay::delivery::sender::signature;
use alert_relay::format::PRESETS;
use alert_relay::route::{route, verdict};
use alert_relay::spool::{DeliveryMeta, Op, Spool};

const FIRING: &str = include_str!("../tests/fixtures/alertmanager-0.25/firing.json");
const MIXED: &str = include_str!("../tests/fixtures/alertmanager-0.25/mixed-resolved.json");

fn payload(alerts: usize) -> Vec<u8> {
    let alerts: Vec<Value> = (0..alerts)
        .map(|i| {
            let severity = ["critical", "warning", "info"][i % 3];
            json!({
                "status": if i % 3 == 0 { "resolved" } else { "firing" },
                // Names sorted, as Alertmanager sends them.
                "labels": {
                    "alertname": "HighLatency",
                    "namespace": format!("ns-{}", i % 7),
                    "pod": format!("api-{i}"),
                    "service": "api",
                    "severity": severity,
                },
                "annotations": {"summary": "p99 latency above 1s", "description": format!("pod api-{i} is slow")},
                "startsAt": "2026-11-27T03:59:40.014258703Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": format!("{i:016x}"),
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "receiver": "relay", "status": "firing", "alerts": alerts,
        "groupLabels": {"alertname": "HighLatency"}, "commonLabels": {"alertname": "HighLatency"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "version": "4",
        "groupKey": "{}:{alertname=\"HighLatency\"}", "truncatedAlerts": 0
    }))
    .unwrap()
}

/// `n` receivers with three conditions each (In, NotIn, Matches).
fn receivers(n: usize) -> Vec<Arc<Receiver>> {
    let mut yaml = String::from("receivers:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: r{i}\n    url: http://127.0.0.1:1/\n    conditions:\n      - {{ label: severity, operator: In, values: [critical, warning] }}\n      - {{ label: namespace, operator: NotIn, values: [ns-{}] }}\n      - {{ label: pod, operator: Matches, values: ['api-.*'] }}\n",
            i % 7
        ));
    }
    Config::from_yaml(&yaml).unwrap().receivers
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, body) in
        [("firing", FIRING.as_bytes().to_vec()), ("mixed", MIXED.as_bytes().to_vec()), ("1000-alerts", payload(1000))]
    {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name}/ours"), |b| b.iter(|| Notification::parse(black_box(&body)).unwrap()));
        group.bench_function(format!("{name}/baseline-untyped"), |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).unwrap())
        });
    }
    group.finish();
}

fn bench_conditions(c: &mut Criterion) {
    let mut group = c.benchmark_group("conditions-per-alert");
    let n = Notification::parse(&payload(1)).unwrap();
    let alert = &n.alerts[0];
    for count in [1, 10, 100] {
        let rs = receivers(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("{count}-receivers/ours"), |b| {
            b.iter(|| rs.iter().filter(|r| verdict(r, black_box(alert)) == alert_relay::route::Fate::Forwarded).count())
        });
        let namespaces: Vec<String> = (0..count).map(|i| format!("ns-{}", i % 7)).collect();
        group.bench_function(format!("{count}-receivers/baseline-hand-written"), |b| {
            b.iter(|| {
                let labels: &LabelSet = black_box(&alert.labels);
                namespaces
                    .iter()
                    .filter(|ns| {
                        matches!(labels.get("severity").map(|v| v.as_str()), Some("critical" | "warning"))
                            && labels.get("namespace").map(|v| v.as_str()) != Some(ns.as_str())
                            && labels.get("pod").is_some_and(|p| p.starts_with("api-"))
                    })
                    .count()
            })
        });
    }
    group.finish();
}

fn bench_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let n = Notification::parse(&payload(10)).unwrap();
    for count in [1, 10] {
        let rs = receivers(count);
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function(format!("10-alerts-{count}-receivers/ours"), |b| b.iter(|| route(black_box(&n), &rs)));
        group.bench_function(format!("10-alerts-{count}-receivers/baseline-serialize-whole"), |b| {
            b.iter(|| rs.iter().map(|_| serde_json::to_vec(black_box(&n)).unwrap()).collect::<Vec<_>>())
        });
    }
    group.finish();
}

fn meta() -> DeliveryMeta {
    DeliveryMeta::new("r0".into(), "{}:{alertname=\"HighLatency\"}".into(), 10, 1)
}

fn bench_spool(c: &mut Criterion) {
    let mut group = c.benchmark_group("spool-commit");
    group.sample_size(20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), false, alert_relay::spool::SpoolGauges::unregistered()).unwrap();
    let body = payload(10);
    for batch in [1usize, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{batch}-deliveries/ours-log"), |b| {
            b.iter_batched(
                || (0..batch).map(|_| Op::Insert { metas: vec![meta()], body: body.clone() }).collect::<Vec<_>>(),
                |ops| runtime.block_on(spool.commit(ops)).unwrap(),
                BatchSize::SmallInput,
            )
        });
        let path = dir.path().join(format!("baseline-{batch}"));
        group.bench_function(format!("{batch}-deliveries/baseline-file-fsync"), |b| {
            b.iter(|| {
                let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
                for _ in 0..batch {
                    f.write_all(&body).unwrap();
                }
                f.sync_data().unwrap();
            })
        });
    }
    group.finish();
}

fn bench_sign(c: &mut Criterion) {
    let mut group = c.benchmark_group("sign");
    let n = Notification::parse(&payload(10)).unwrap();
    let body = serde_json::to_vec(&n).unwrap();
    group.throughput(Throughput::Bytes(body.len() as u64));
    let config = "receivers: [{ name: r, url: 'http://127.0.0.1:1/', signing: { secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', \
                  previous_secret: 'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' } }]";
    let keys = Config::from_yaml(config).unwrap().receivers[0].signing.clone();
    group.bench_function("10-alerts/ours-one-key", |b| {
        b.iter(|| signature(&keys[..1], black_box("0195f0a4-17"), 1_700_000_000, black_box(&body)))
    });
    group.bench_function("10-alerts/ours-two-keys", |b| {
        b.iter(|| signature(&keys, black_box("0195f0a4-17"), 1_700_000_000, black_box(&body)))
    });
    group.bench_function("10-alerts/baseline-serialize", |b| b.iter(|| serde_json::to_vec(black_box(&n)).unwrap()));
    group.finish();
}

fn bench_render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render");
    let n = Notification::parse(&payload(10)).unwrap();
    let routed = serde_json::to_vec(&n).unwrap();
    group.bench_function("10-alerts/baseline-alertmanager-serialize", |b| {
        b.iter(|| serde_json::to_vec(black_box(&n)).unwrap())
    });
    for preset in &PRESETS {
        let yaml =
            format!("receivers: [{{ name: r, url: 'http://127.0.0.1:1/', payload: {{ format: {} }} }}]", preset.name);
        let receiver = Config::from_yaml(&yaml).unwrap().receivers[0].clone();
        group.bench_function(format!("10-alerts/{}", preset.name), |b| {
            b.iter(|| receiver.payload.render(black_box(&routed), "r").unwrap().len())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_parse, bench_conditions, bench_route, bench_spool, bench_sign, bench_render);
criterion_main!(benches);
