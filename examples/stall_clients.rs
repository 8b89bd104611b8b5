//! A load client for the stalled-upstream benchmark (`scripts/load.sh` runs it).
//!
//! ```text
//! cargo run --release --example stall_clients -- --target 127.0.0.1:8080 --path /slow \
//!     --requests 10000 --timeout-ms 2000 [--gateway-pid PID] [--rounds 2]
//! ```
//!
//! Opens `--requests` connections to the gateway and has a small `/ok` answered on each, so that
//! every connection is accepted and idle; then sends one request on each, all at once, to a route
//! whose upstream never answers, and waits. Every request must come back as a 504 within the
//! gateway's timeout plus 100 ms, counted from when that request was sent. With `--gateway-pid`,
//! it reads the gateway's resident memory with the connections idle, while every request is
//! pending, and after they are answered, and reports the bytes each pending request held.
//! `--rounds` repeats the whole burst: resident memory that stays level from one round to the next
//! is memory the allocator keeps for reuse, not a leak.
//!
//! Prints a summary and `key=value` lines for scripts. Loopback addresses only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Options {
    target: SocketAddr,
    path: String,
    requests: usize,
    timeout: Duration,
    gateway_pid: Option<u32>,
    rounds: u32,
}

fn parse_options() -> Options {
    let mut options = Options {
        target: "127.0.0.1:8080".parse().expect("default address"),
        path: "/slow".into(),
        requests: 10_000,
        timeout: Duration::from_secs(2),
        gateway_pid: None,
        rounds: 1,
    };
    let mut args = std::env::args().skip(1);
    let fail = |what: &str| -> ! {
        eprintln!("stall_clients: bad {what}; see the file's docs for usage");
        std::process::exit(2)
    };
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| fail(&arg));
        match arg.as_str() {
            "--target" => options.target = value.parse().unwrap_or_else(|_| fail("--target")),
            "--path" => options.path = value,
            "--requests" => options.requests = value.parse().unwrap_or_else(|_| fail("--requests")),
            "--timeout-ms" => {
                let ms = value.parse().unwrap_or_else(|_| fail("--timeout-ms"));
                options.timeout = Duration::from_millis(ms);
            }
            "--rounds" => options.rounds = value.parse().unwrap_or_else(|_| fail("--rounds")),
            "--gateway-pid" => {
                options.gateway_pid = Some(value.parse().unwrap_or_else(|_| fail("--gateway-pid")))
            }
            _ => fail(&arg),
        }
    }
    if !options.target.ip().is_loopback() {
        fail("--target: only loopback addresses");
    }
    options
}

/// Resident memory of a process, in bytes, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

enum Outcome {
    /// Status, and time from sending the request to the end of the response.
    Answered(u16, Duration),
    Failed,
    Hung,
}

/// Reads one response with a `content-length` off a keep-alive connection.
async fn read_response(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok(status)
}

/// Opens a connection and has one small request answered on it, so that the gateway has accepted
/// and is serving the connection before the timed request: a burst of connects otherwise waits in
/// the listen queue, and that wait is not the gateway's timeout.
async fn warm_connection(target: SocketAddr) -> Option<TcpStream> {
    for _ in 0..100 {
        let Ok(mut stream) = TcpStream::connect(target).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let warm = b"GET /ok HTTP/1.1\r\nhost: gateway\r\n\r\n";
        if stream.write_all(warm).await.is_ok() && read_response(&mut stream).await.ok()? == 200 {
            return Some(stream);
        }
    }
    None
}

async fn one_request(
    target: SocketAddr,
    request: Arc<Vec<u8>>,
    warmed: Arc<AtomicUsize>,
    go: Arc<tokio::sync::Notify>,
    sent: Arc<AtomicUsize>,
) -> Outcome {
    let stream = warm_connection(target).await;
    warmed.fetch_add(1, Ordering::SeqCst);
    go.notified().await;
    let Some(mut stream) = stream else {
        sent.fetch_add(1, Ordering::SeqCst);
        return Outcome::Failed;
    };
    if stream.write_all(&request).await.is_err() {
        sent.fetch_add(1, Ordering::SeqCst);
        return Outcome::Failed;
    }
    let started = Instant::now();
    sent.fetch_add(1, Ordering::SeqCst);
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response));
    match read.await {
        Err(_) => Outcome::Hung,
        Ok(Err(_)) if response.is_empty() => Outcome::Failed,
        Ok(_) => {
            let elapsed = started.elapsed();
            let status = response
                .get(9..12)
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Outcome::Answered(status, elapsed)
        }
    }
}

struct Burst {
    latencies: Vec<Duration>,
    wrong_status: usize,
    failed: usize,
    hung: usize,
    all_sent_after: Duration,
    rss_before: Option<u64>,
    rss_pending: Option<u64>,
    rss_after: Option<u64>,
}

/// One burst: every connection warmed, then every timed request sent at once.
async fn burst(options: &Options, request: &Arc<Vec<u8>>) -> Burst {
    let warmed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    let tasks: Vec<_> = (0..options.requests)
        .map(|_| {
            tokio::spawn(one_request(
                options.target,
                request.clone(),
                warmed.clone(),
                go.clone(),
                sent.clone(),
            ))
        })
        .collect();
    while warmed.load(Ordering::SeqCst) < options.requests {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Idle connections only, now: this is the gateway's resting memory for them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = options.gateway_pid.and_then(rss_bytes);
    let started = Instant::now();
    go.notify_waiters();

    // Sample the gateway's memory while everything is pending: once every request is sent, and
    // again a quarter of the timeout later, keeping the larger.
    while sent.load(Ordering::SeqCst) < options.requests
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all_sent_after = started.elapsed();
    let mut rss_pending = None;
    if let Some(pid) = options.gateway_pid {
        rss_pending = rss_bytes(pid);
        tokio::time::sleep(options.timeout / 4).await;
        rss_pending = rss_pending.max(rss_bytes(pid));
    }

    let mut latencies = Vec::with_capacity(options.requests);
    let (mut wrong_status, mut failed, mut hung) = (0usize, 0usize, 0usize);
    for task in tasks {
        match task.await.expect("client task") {
            Outcome::Answered(504, elapsed) => latencies.push(elapsed),
            Outcome::Answered(_, _) => wrong_status += 1,
            Outcome::Failed => failed += 1,
            Outcome::Hung => hung += 1,
        }
    }
    // Let the gateway drop its connections before the last reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Burst {
        latencies,
        wrong_status,
        failed,
        hung,
        all_sent_after,
        rss_before,
        rss_pending,
        rss_after: options.gateway_pid.and_then(rss_bytes),
    }
}

#[tokio::main]
async fn main() {
    let options = parse_options();
    let request = Arc::new(
        format!(
            "GET {} HTTP/1.1\r\nhost: gateway\r\naccept: application/json\r\nconnection: close\r\n\r\n",
            options.path
        )
        .into_bytes(),
    );
    let mut last_round = None;
    for round in 1..=options.rounds {
        let report = burst(&options, &request).await;
        println!(
            "round {round}: gateway RSS after {:.1} MiB",
            report.rss_after.unwrap_or(0) as f64 / 1048576.0
        );
        println!("rss_after_round{round}={}", report.rss_after.unwrap_or(0));
        last_round = Some(report);
    }
    let Some(Burst {
        mut latencies,
        wrong_status,
        failed,
        hung,
        all_sent_after,
        rss_before,
        rss_pending,
        rss_after,
    }) = last_round
    else {
        return;
    };
    latencies.sort();
    let limit = options.timeout + Duration::from_millis(100);
    let late = latencies.iter().filter(|l| **l > limit).count();
    let pct = |p: f64| -> Duration {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{} requests sent in {:.2?}; {} answered 504, {} other status, {} failed, {} hung",
        options.requests,
        all_sent_after,
        latencies.len(),
        wrong_status,
        failed,
        hung
    );
    println!(
        "time to 504: min {} ms  p50 {} ms  p99 {} ms  max {} ms  (limit {} ms); {} late",
        pct(0.0).as_millis(),
        pct(0.5).as_millis(),
        pct(0.99).as_millis(),
        pct(1.0).as_millis(),
        limit.as_millis(),
        late
    );
    // The gateway answers at its own pace: 504s leave at most as fast as it can serve requests.
    let spread = pct(1.0).saturating_sub(pct(0.0));
    println!(
        "the 504s left over {} ms ({:.0} per second)",
        spread.as_millis(),
        latencies.len() as f64 / spread.as_secs_f64().max(0.001)
    );
    println!("stall_answered={}", latencies.len());
    println!("stall_wrong={wrong_status}");
    println!("stall_failed={failed}");
    println!("stall_hung={hung}");
    println!("stall_late={late}");
    println!("stall_max_ms={}", pct(1.0).as_millis());
    println!("stall_spread_ms={}", spread.as_millis());
    println!(
        "stall_rate={:.0}",
        latencies.len() as f64 / spread.as_secs_f64().max(0.001)
    );
    if let (Some(before), Some(pending), Some(after)) = (rss_before, rss_pending, rss_after) {
        let per_request = pending.saturating_sub(before) / options.requests.max(1) as u64;
        println!(
            "gateway RSS: before {:.1} MiB, all pending {:.1} MiB, after {:.1} MiB; {} bytes per pending request",
            before as f64 / 1048576.0,
            pending as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per_request
        );
        println!("rss_before={before}");
        println!("rss_pending={pending}");
        println!("rss_after={after}");
        println!("rss_per_pending={per_request}");
    }
}
