//! The whole-process load tool of `scripts/bench`: paced and unpaced load on
//! `/webhook`, and loopback webhook targets that record when each
//! notification arrives. Prints one JSON object per run.
//!
//!   loadgen post --url URL --count N [--concurrency C] [--alerts A]
//!   loadgen latency --url URL --target ADDR --rate R --seconds S
//!   loadgen hang --listen ADDR
//!   loadgen hop --alertmanager URL --target ADDR --count N

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map(|v| v.parse().expect("a number")).unwrap_or(default)
}

fn payload(group: &str, alerts: usize) -> Vec<u8> {
    let alerts: Vec<Value> = (0..alerts)
        .map(|i| {
            json!({
                "status": "firing",
                "labels": {"alertname": "LoadTest", "severity": "critical", "namespace": "bench", "pod": format!("api-{i}")},
                "annotations": {"summary": "load test"},
                "startsAt": "2026-11-27T03:59:40.014258703Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": format!("{i:016x}"),
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "receiver": "relay", "status": "firing", "alerts": alerts, "groupLabels": {"alertname": "LoadTest"},
        "commonLabels": {"alertname": "LoadTest"}, "commonAnnotations": {}, "externalURL": "http://am",
        "version": "4", "groupKey": group, "truncatedAlerts": 0
    }))
    .unwrap()
}

/// Arrivals at the target: (path, groupKey) → first arrival.
type Arrivals = Arc<Mutex<HashMap<(String, String), Instant>>>;

/// A keep-alive HTTP/1.1 target answering 204 and noting arrivals, or never
/// answering at all (`hang`).
async fn serve(listener: TcpListener, arrivals: Arrivals, hang: bool) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                // One request: head, then Content-Length bytes.
                let (head_end, length) = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                while buf.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let now = Instant::now();
                if hang {
                    // Hold the connection open without a word, as a hung target does.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let path =
                    String::from_utf8_lossy(&buf[..head_end]).split_whitespace().nth(1).unwrap_or("").to_string();
                if let Ok(body) = serde_json::from_slice::<Value>(&buf[head_end..head_end + length]) {
                    if let Some(key) = body["groupKey"].as_str() {
                        arrivals.lock().unwrap().entry((path, key.to_string())).or_insert(now);
                    }
                }
                buf.drain(..head_end + length);
                if stream.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        });
    }
}

fn client(connections: usize) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(connections).build().unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn post_one(client: &reqwest::Client, url: &str, body: Vec<u8>) -> bool {
    matches!(
        client.post(url).header("content-type", "application/json").body(body).send().await,
        Ok(r) if r.status().as_u16() == 200
    )
}

/// As fast as `concurrency` connections go: fills a spool.
async fn post(args: &[String]) -> Value {
    let url = format!("{}/webhook", arg(args, "--url").expect("--url"));
    let count = num(args, "--count", 1000);
    let concurrency = num(args, "--concurrency", 16) as usize;
    let alerts = num(args, "--alerts", 10) as usize;
    let client = client(concurrency);
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (client, url, next, accepted) = (client.clone(), url.clone(), next.clone(), accepted.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    if post_one(&client, &url, payload(&format!("fill-{w}-{i}"), alerts)).await {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    json!({"sent": count, "accepted": accepted.load(Ordering::Relaxed), "seconds": seconds, "per_second": count as f64 / seconds})
}

/// Paced load with unique groups; latency from sending each request to its
/// arrival at the target, both on this process's clock.
async fn latency(args: &[String]) -> Value {
    let url = format!("{}/webhook", arg(args, "--url").expect("--url"));
    let rate = num(args, "--rate", 1000);
    let seconds = num(args, "--seconds", 10);
    let listener = TcpListener::bind(arg(args, "--target").expect("--target")).await.unwrap();
    let arrivals: Arrivals = Arc::default();
    tokio::spawn(serve(listener, arrivals.clone(), false));
    let client = client(64);
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let key = format!("lat-{i}");
        let body = payload(&key, 10);
        sent_at.lock().unwrap().insert(key, Instant::now());
        let (client, url, accepted) = (client.clone(), url.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            if post_one(&client, &url, body).await {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = accepted.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (arrivals.lock().unwrap().len() as u64) < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = sent_at.lock().unwrap();
    let mut ms: Vec<f64> = arrivals
        .lock()
        .unwrap()
        .iter()
        .filter_map(|((_, key), at)| sent.get(key).map(|s| at.duration_since(*s).as_secs_f64() * 1000.0))
        .collect();
    ms.sort_by(f64::total_cmp);
    json!({
        "rate": rate, "sent": total, "accepted": accepted, "delivered": ms.len(),
        "p50_ms": percentile(&ms, 50.0), "p99_ms": percentile(&ms, 99.0), "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

/// Alertmanager notifying the target directly and through the relay: the
/// difference of the two arrivals of one notification is the relay's hop.
async fn hop(args: &[String]) -> Value {
    let am = arg(args, "--alertmanager").expect("--alertmanager");
    let count = num(args, "--count", 50);
    let listener = TcpListener::bind(arg(args, "--target").expect("--target")).await.unwrap();
    let arrivals: Arrivals = Arc::default();
    tokio::spawn(serve(listener, arrivals.clone(), false));
    let client = client(4);
    let run = std::process::id();
    for i in 0..count {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let alert = json!([{
            "labels": {"alertname": format!("Hop{run}x{i}"), "severity": "critical"},
            "annotations": {}, "startsAt": now,
        }]);
        let r = client
            .post(format!("{am}/api/v2/alerts"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&alert).unwrap())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "Alertmanager refused: {}", r.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while (arrivals.lock().unwrap().len() as u64) < 2 * count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let arrivals = arrivals.lock().unwrap();
    let mut added: Vec<f64> = arrivals
        .iter()
        .filter(|((path, _), _)| path == "/direct")
        .filter_map(|((_, key), direct)| {
            arrivals.get(&("/relay".to_string(), key.clone())).map(|relayed| {
                relayed.saturating_duration_since(*direct).as_secs_f64() * 1000.0
                    - direct.saturating_duration_since(*relayed).as_secs_f64() * 1000.0
            })
        })
        .collect();
    added.sort_by(f64::total_cmp);
    json!({"notifications": count, "pairs": added.len(), "added_p50_ms": percentile(&added, 50.0), "added_p99_ms": percentile(&added, 99.0)})
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("post") => post(&args).await,
        Some("latency") => latency(&args).await,
        Some("hop") => hop(&args).await,
        Some("hang") => {
            let listener = TcpListener::bind(arg(&args, "--listen").expect("--listen")).await.unwrap();
            serve(listener, Arc::default(), true).await;
            return;
        }
        Some("target") => {
            let listener = TcpListener::bind(arg(&args, "--listen").expect("--listen")).await.unwrap();
            serve(listener, Arc::default(), false).await;
            return;
        }
        _ => {
            eprintln!("usage: loadgen post|latency|hop|hang|target ... (see benches/loadgen.rs)");
            std::process::exit(2);
        }
    };
    println!("{result}");
}
