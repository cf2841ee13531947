//! The whole-process load tool of `scripts/bench`: paced and unpaced load on
//! `/webhook`, and loopback webhook targets that record when each
//! notification arrives. Prints one JSON object per run.
//!
//!   loadgen post --url URL --count N [--concurrency C] [--alerts A]
//!   loadgen latency --url URL --target ADDR --rate R --seconds S [--dump FILE]
//!   loadgen hang --listen ADDR
//!   loadgen hop --alertmanager URL --target ADDR --count N
//!   loadgen soak --url URL --target ADDR --rate R --seconds S --receivers N --pid PID [--disk-dir DIR]
//!   loadgen disk --dir DIR --bytes B --count N
//!   loadgen forward --listen ADDR --to URL

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The relay's allocator, so that `forward` is the floor of the relay's parts
/// and not of glibc's malloc (the load and the targets are in the same
/// process for the relay's runs and for nginx's, so their comparisons hold).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                // Names sorted, as Alertmanager sends them.
                "labels": {"alertname": "LoadTest", "namespace": "bench", "pod": format!("api-{i}"), "severity": "critical"},
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

/// What the target does with each notification: (path, groupKey, arrival).
type OnArrival = Arc<dyn Fn(&str, &str, Instant) + Send + Sync>;

/// Notes each first arrival in `arrivals`.
fn recording(arrivals: Arrivals) -> OnArrival {
    Arc::new(move |path, key, at| {
        arrivals.lock().unwrap().entry((path.to_string(), key.to_string())).or_insert(at);
    })
}

/// A keep-alive HTTP/1.1 target answering 204 and noting arrivals, or never
/// answering at all (`hang`).
async fn serve(listener: TcpListener, on_arrival: OnArrival, hang: bool) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let on_arrival = on_arrival.clone();
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
                        on_arrival(&path, key, now);
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
    tokio::spawn(serve(listener, recording(arrivals.clone()), false));
    let client = client(64);
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let sampling = Arc::new(AtomicBool::new(true));
    let steal = tokio::spawn(sample_steal(start, sampling.clone()));
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
    sampling.store(false, Ordering::Relaxed);
    let steal = steal.await.unwrap();
    let sent = sent_at.lock().unwrap();
    // Every delivery: (seconds from the run's start to its send, ms to arrival).
    let mut rows: Vec<(f64, f64)> = arrivals
        .lock()
        .unwrap()
        .iter()
        .filter_map(|((_, key), at)| {
            let s = sent.get(key)?;
            Some((s.duration_since(start).as_secs_f64(), at.duration_since(*s).as_secs_f64() * 1000.0))
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(path) = arg(args, "--dump") {
        // In send order: where in the run the slow ones were.
        let text: String = rows.iter().map(|(t, ms)| format!("{t:.4} {ms:.3}\n")).collect();
        std::fs::write(path, text).expect("--dump: writable");
    }
    let worst = rows.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    let mut ms: Vec<f64> = rows.iter().map(|r| r.1).collect();
    ms.sort_by(f64::total_cmp);
    json!({
        "rate": rate, "sent": total, "accepted": accepted, "delivered": ms.len(),
        "p50_ms": percentile(&ms, 50.0), "p99_ms": percentile(&ms, 99.0), "max_ms": ms.last().copied().unwrap_or(f64::NAN),
        "max_sent_at_s": worst.map(|w| w.0),
        "steal": steal,
    })
}

/// The CPU time the hypervisor took from this machine (every CPU's, from
/// /proc/stat, whose unit is USER_HZ: 100 a second on Linux), in ms. None
/// where there is no such figure.
fn steal_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: f64 = stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks * 10.0)
}

/// Samples the stolen time every 50 ms while `running`: the run's total, and
/// the 100 ms in which the most was stolen, with when (seconds from `start`,
/// the clock of `--dump`). A stall of the whole VM shows there, not in the
/// relay's figures.
async fn sample_steal(start: Instant, running: Arc<AtomicBool>) -> Value {
    let mut samples: Vec<(f64, f64)> = Vec::new();
    while running.load(Ordering::Relaxed) {
        let Some(ms) = steal_ms() else { return Value::Null };
        samples.push((start.elapsed().as_secs_f64(), ms));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return Value::Null };
    let worst = samples.windows(3).map(|w| (w[0].0, w[2].1 - w[0].1)).max_by(|a, b| a.1.total_cmp(&b.1));
    let seconds = (last.0 - first.0).max(1e-9);
    json!({
        "cpu_ms": last.1 - first.1,
        "percent_of_one_cpu": (last.1 - first.1) / 10.0 / seconds,
        "worst_100ms_cpu_ms": worst.map(|w| w.1),
        "worst_100ms_at_s": worst.map(|w| w.0),
    })
}

/// Alertmanager notifying the target directly and through the relay: the
/// difference of the two arrivals of one notification is the relay's hop.
async fn hop(args: &[String]) -> Value {
    let am = arg(args, "--alertmanager").expect("--alertmanager");
    let count = num(args, "--count", 50);
    let listener = TcpListener::bind(arg(args, "--target").expect("--target")).await.unwrap();
    let arrivals: Arrivals = Arc::default();
    tokio::spawn(serve(listener, recording(arrivals.clone()), false));
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

/// Latencies of one stretch of a soak run.
#[derive(Default)]
struct Stretch {
    ms: Vec<f64>,
}

impl Stretch {
    fn summary(&mut self, index: usize) -> Value {
        self.ms.sort_by(f64::total_cmp);
        let ms = std::mem::take(&mut self.ms);
        json!({"minute": index, "delivered": ms.len(), "p50_ms": percentile(&ms, 50.0), "p99_ms": percentile(&ms, 99.0),
               "max_ms": ms.last().copied().unwrap_or(f64::NAN)})
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().to_string()))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The relay's durable commits slower than each bound so far, from its
/// commit histogram: (bound in seconds, commits above it).
async fn slow_commits(client: &reqwest::Client, base: &str) -> Vec<(f64, u64)> {
    let Ok(resp) = client.get(format!("{base}/metrics")).send().await else { return Vec::new() };
    let text = resp.text().await.unwrap_or_default();
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("alert_relay_spool_commit_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.parse().ok()?, rest.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    let total = buckets.iter().find(|(le, _)| le.is_infinite()).map_or(0, |b| b.1);
    buckets.into_iter().filter(|(le, _)| [0.01, 0.05, 0.1, 0.25].contains(le)).map(|(le, n)| (le, total - n)).collect()
}

/// A long paced run to `receivers` receivers (paths /hook/1..N of one
/// target): latency per minute, the worst one and when, the relay's RSS every
/// 10 s and its slow commits. Memory of its own stays flat: latencies are
/// summarised per minute.
async fn soak(args: &[String]) -> Value {
    let base = arg(args, "--url").expect("--url");
    let url = format!("{base}/webhook");
    let rate = num(args, "--rate", 800);
    let seconds = num(args, "--seconds", 1800);
    let receivers = num(args, "--receivers", 2) as usize;
    let pid = num(args, "--pid", 0) as u32;
    let probe = arg(args, "--disk-dir").map(|dir| DiskProbe::start(&dir));
    let listener = TcpListener::bind(arg(args, "--target").expect("--target")).await.unwrap();
    let started = Instant::now();
    // groupKey → (sent, arrivals so far)
    let sent_at: Arc<Mutex<HashMap<String, (Instant, usize)>>> = Arc::default();
    let stretch: Arc<Mutex<Stretch>> = Arc::default();
    let worst: Arc<Mutex<(f64, f64)>> = Arc::default();
    let delivered = Arc::new(AtomicU64::new(0));
    let on_arrival: OnArrival = {
        let (sent_at, stretch, worst, delivered) = (sent_at.clone(), stretch.clone(), worst.clone(), delivered.clone());
        Arc::new(move |_path, key, at| {
            let mut sent = sent_at.lock().unwrap();
            let Some(entry) = sent.get_mut(key) else { return };
            let ms = at.duration_since(entry.0).as_secs_f64() * 1000.0;
            entry.1 += 1;
            if entry.1 >= receivers {
                sent.remove(key);
            }
            drop(sent);
            delivered.fetch_add(1, Ordering::Relaxed);
            stretch.lock().unwrap().ms.push(ms);
            let mut worst = worst.lock().unwrap();
            if ms > worst.0 {
                *worst = (ms, at.duration_since(started).as_secs_f64());
            }
        })
    };
    tokio::spawn(serve(listener, on_arrival, false));
    let client = client(64);
    let accepted = Arc::new(AtomicU64::new(0));
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut minutes = Vec::new();
    // A minute's figures, with the disk's beside them when it is probed,
    // and the CPU time the hypervisor took meanwhile.
    let stolen = std::cell::Cell::new(steal_ms());
    let minute_of = |index: usize| {
        let mut minute = stretch.lock().unwrap().summary(index);
        if let Some(probe) = &probe {
            probe.add_to(&mut minute);
        }
        let now = steal_ms();
        let before = stolen.replace(now);
        if let (Some(now), Some(before)) = (now, before) {
            minute["steal_cpu_ms"] = json!(now - before);
        }
        minute
    };
    let mut rss = Vec::new();
    let mut slow = Vec::new();
    let mut next_sample = Instant::now();
    let mut next_minute = Instant::now() + Duration::from_secs(60);
    let mut in_flight = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let key = format!("soak-{i}");
        let body = payload(&key, 10);
        sent_at.lock().unwrap().insert(key, (Instant::now(), 0));
        let (poster, url, accepted) = (client.clone(), url.clone(), accepted.clone());
        in_flight.push(tokio::spawn(async move {
            if post_one(&poster, &url, body).await {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }));
        if in_flight.len() >= 4096 {
            in_flight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
        }
        let now = Instant::now();
        if now >= next_sample {
            next_sample += Duration::from_secs(10);
            let at = now.duration_since(started).as_secs();
            if pid != 0 {
                rss.push(json!([at, rss_kib(pid)]));
            }
            slow.push(json!({"at_s": at, "over": slow_commits(&client, &base).await}));
        }
        if now >= next_minute {
            next_minute += Duration::from_secs(60);
            minutes.push(minute_of(minutes.len()));
        }
    }
    for t in in_flight {
        t.await.unwrap();
    }
    let expected = accepted.load(Ordering::Relaxed) * receivers as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    minutes.push(minute_of(minutes.len()));
    drop(probe);
    let all_p99: Vec<f64> = minutes.iter().filter_map(|m| m["p99_ms"].as_f64()).collect();
    let (max_ms, max_at) = *worst.lock().unwrap();
    let rss_values: Vec<u64> = rss.iter().filter_map(|r| r[1].as_u64()).collect();
    json!({
        "rate": rate, "seconds": seconds, "receivers": receivers, "sent": total,
        "accepted": accepted.load(Ordering::Relaxed), "delivered": delivered.load(Ordering::Relaxed),
        "max_ms": max_ms, "max_at_s": max_at,
        "worst_minute_p99_ms": all_p99.iter().copied().fold(0.0, f64::max),
        "rss_kib_first": rss_values.first(), "rss_kib_last": rss_values.last(), "rss_kib_max": rss_values.iter().max(),
        "slow_commits_at_end": slow_commits(&client, &base).await,
        "minutes": minutes, "rss_kib": rss, "slow_commits": slow,
    })
}

/// Appends `block` to `file` and `fdatasync`s it; the milliseconds it took.
fn append_synced(file: &mut std::fs::File, block: &[u8]) -> f64 {
    use std::io::Write;
    let t = Instant::now();
    file.write_all(block).unwrap();
    file.sync_data().unwrap();
    t.elapsed().as_secs_f64() * 1000.0
}

/// The disk beside a soak: once a second, 4 KiB appended to a file in the
/// spool's folder and `fdatasync`ed, so that a slow minute of the relay can
/// be set beside the disk's own figures for that minute.
struct DiskProbe {
    samples: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskProbe {
    fn start(dir: &str) -> DiskProbe {
        let path = std::path::Path::new(dir).join(format!("disk-probe-{}", std::process::id()));
        let samples: Arc<Mutex<Vec<f64>>> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let (into, stopped) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
            let block = vec![0x5a_u8; 4096];
            let mut next = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                into.lock().unwrap().push(append_synced(&mut file, &block));
                // After a write slower than a second the next goes at once,
                // and the seconds count on from there: no burst to catch up.
                next = (next + Duration::from_secs(1)).max(Instant::now());
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            drop(file);
            let _ = std::fs::remove_file(&path);
        });
        DiskProbe { samples, stop, thread: Some(thread) }
    }

    /// The samples since the last call: p50 and max, into `minute`.
    fn add_to(&self, minute: &mut Value) {
        let mut ms = std::mem::take(&mut *self.samples.lock().unwrap());
        ms.sort_by(f64::total_cmp);
        minute["disk_p50_ms"] = json!(percentile(&ms, 50.0));
        minute["disk_max_ms"] = json!(ms.last().copied().unwrap_or(f64::NAN));
    }
}

impl Drop for DiskProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The disk's own floor for a durable forwarder: `bytes` appended to a file
/// and `fdatasync`ed, `count` times, as one commit writes them.
fn disk(args: &[String]) -> Value {
    let dir = std::path::PathBuf::from(arg(args, "--dir").expect("--dir"));
    let bytes = num(args, "--bytes", 4096) as usize;
    let count = num(args, "--count", 2000);
    let path = dir.join(format!("disk-baseline-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let block: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let mut ms = Vec::with_capacity(count as usize);
    let started = Instant::now();
    for _ in 0..count {
        ms.push(append_synced(&mut file, &block));
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    ms.sort_by(f64::total_cmp);
    json!({"bytes": bytes, "count": count, "p50_ms": percentile(&ms, 50.0), "p99_ms": percentile(&ms, 99.0),
           "max_ms": ms.last().copied().unwrap_or(f64::NAN), "per_second": count as f64 / seconds})
}

/// The floor of the relay's own parts: actix-web takes each POST, reqwest
/// forwards its body to `--to` (as the relay's client is set up: no proxy, no
/// redirects, a timeout, a kept-alive pool) and the answer goes back once the
/// target has answered, as nginx's does. Nothing else: no parsing, no spool.
/// What a forwarder built from these crates costs before it does any work.
async fn forward(args: &[String]) {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let listen = arg(args, "--listen").expect("--listen");
    let to = arg(args, "--to").expect("--to");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let state = web::Data::new((client, to));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    HttpServer::new(move || {
        App::new().app_data(state.clone()).default_service(web::to(
            |state: web::Data<(reqwest::Client, String)>, body: web::Bytes| async move {
                let (client, to) = state.get_ref();
                match client.post(to).header("content-type", "application/json").body(body).send().await {
                    Ok(answer) if answer.status().is_success() => {
                        HttpResponse::Ok().content_type("application/json").body(r#"{"deliveries":1}"#)
                    }
                    _ => HttpResponse::BadGateway().finish(),
                }
            },
        ))
    })
    .workers(workers)
    .disable_signals()
    .bind(listen)
    .unwrap()
    .run()
    .await
    .unwrap();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("post") => post(&args).await,
        Some("latency") => latency(&args).await,
        Some("hop") => hop(&args).await,
        Some("soak") => soak(&args).await,
        Some("disk") => disk(&args),
        Some("hang") => {
            let listener = TcpListener::bind(arg(&args, "--listen").expect("--listen")).await.unwrap();
            serve(listener, Arc::new(|_: &str, _: &str, _| {}), true).await;
            return;
        }
        Some("forward") => {
            forward(&args).await;
            return;
        }
        Some("target") => {
            let listener = TcpListener::bind(arg(&args, "--listen").expect("--listen")).await.unwrap();
            serve(listener, Arc::new(|_: &str, _: &str, _| {}), false).await;
            return;
        }
        _ => {
            eprintln!(
                "usage: loadgen post|latency|hop|soak|disk|hang|target|forward ... (see benches/load/loadgen.rs)"
            );
            std::process::exit(2);
        }
    };
    println!("{result}");
}
