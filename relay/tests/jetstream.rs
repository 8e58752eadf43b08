//! The relay against a real NATS server with JetStream (`nats-server`, 2.9 as Debian ships it;
//! `.ci/run` installs it): 100,000 events relayed and read back in order per key with nothing
//! missing; the relay killed with SIGKILL at random moments and restarted, nothing missing and
//! no duplicate left in the stream; the broker stopped and started again under load; another
//! publisher's message in the stream between two runs; a stream that does not exist; a broker
//! that never answers. Every server and relay process started
//! here is stopped by its PID when its test ends, and by the kernel if the test process is
//! killed (`die_with_parent`).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use annal::{Durability, Event, Log, Options};
use annal_relay::{Relay, RelayConfig, RelayError};
use futures::StreamExt;

const STREAM: &str = "EVENTS";
const PREFIX: &str = "events";

/// A `nats-server` with JetStream on a loopback port, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(store: &Path) -> Server {
        Server::start_on(store, free_port())
    }

    fn start_on(store: &Path, port: u16) -> Server {
        let mut command = Command::new(nats_server());
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .expect("start nats-server (install it: apt-get install nats-server)");
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The child gets SIGKILL when the thread that started it ends, also when this process is
/// killed and no destructor runs (Linux `PR_SET_PDEATHSIG`).
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec and only calls prctl, which is
    // async-signal-safe; it allocates nothing and touches no lock.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The `annal-relay` program on `log_dir`, batches of `batch`, its stdout piped.
fn relay_command(log_dir: &Path, url: &str, batch: u32, until_caught_up: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_annal-relay"));
    die_with_parent(&mut command);
    command
        .arg(log_dir)
        .args(["--to", url, "--stream", STREAM, "--subject", PREFIX])
        .args(["--batch", &batch.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if until_caught_up {
        command.arg("--until-caught-up");
    }
    command
}

fn nats_server() -> &'static str {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("nats-server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Creates the stream that takes `events.>`.
fn create_stream(url: &str) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: STREAM.to_owned(),
                subjects: vec![format!("{PREFIX}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
    });
}

/// Every message of the stream, in stream order: (key, version, payload).
fn read_back(url: &str, expected: usize) -> Vec<(String, u64, Vec<u8>)> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream.get_stream(STREAM).await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while out.len() < expected && Instant::now() < deadline {
            let mut messages = consumer
                .fetch()
                .max_messages(1_000)
                .expires(Duration::from_millis(500))
                .messages()
                .await
                .unwrap();
            while let Some(message) = messages.next().await {
                let message = message.unwrap();
                let headers = message.headers.as_ref().expect("headers");
                let key = headers.get("Annal-Key").unwrap().as_str().to_owned();
                let version = headers
                    .get("Annal-Version")
                    .unwrap()
                    .as_str()
                    .parse()
                    .unwrap();
                out.push((key, version, message.payload.to_vec()));
            }
        }
        // Nothing more than expected either.
        let info = jetstream
            .get_stream(STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(
            info.state.messages,
            out.len() as u64,
            "messages in the stream"
        );
        out
    })
}

/// Checks the messages: each key's versions 0, 1, 2, ... in stream order, with the payloads the
/// log has, and `total` in all.
fn check(messages: &[(String, u64, Vec<u8>)], log_dir: &Path, total: u64) {
    assert_eq!(
        messages.len() as u64,
        total,
        "nothing missing, no duplicate"
    );
    let mut next: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, version, payload) in messages {
        let expected = next.entry(key.as_str()).or_insert(0);
        assert_eq!(*version, *expected, "key {key}: versions in order");
        *expected += 1;
        assert_eq!(payload, &payload_of(key, *version), "key {key} v{version}");
    }
    let _ = log_dir;
}

fn payload_of(key: &str, version: u64) -> Vec<u8> {
    format!("{key} v{version} ........................................").into_bytes()
}

/// Appends `count` events over `keys` keys, in batches of up to 10 per key.
fn append(log: &Log, count: u64, keys: u64, versions: &mut BTreeMap<String, u64>) {
    let mut appended = 0;
    let mut k = 0;
    while appended < count {
        let key = format!("order-{:04}", k % keys);
        let n = (count - appended).min(1 + k % 10);
        let first = *versions.get(&key).unwrap_or(&0);
        let payloads: Vec<Vec<u8>> = (first..first + n).map(|v| payload_of(&key, v)).collect();
        log.append_batch(key.as_bytes(), payloads.iter().map(Event::new))
            .unwrap();
        versions.insert(key, first + n);
        appended += n;
        k += 1;
    }
}

fn relay_until_caught_up(log: &Log, config: RelayConfig) -> annal_relay::RelayStats {
    let relay = Relay::connect(log, config).unwrap();
    let group = log.group("relay").unwrap();
    let stop = AtomicBool::new(false);
    relay
        .run(&stop, |_| group.lag().iter().all(|&l| l == 0))
        .unwrap()
}

/// Runs `relay` until `group` has no lag, for at most `limit`: a watchdog stops it a little
/// later if it has not returned, since a run's retries do not look at its `done` condition.
fn run_until_caught_up(
    relay: &Relay,
    group: &annal::Group,
    limit: Duration,
) -> annal_relay::RelayStats {
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + limit;
    let (finished, watched) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let stop = &stop;
        scope.spawn(move || {
            let waited = watched.recv_timeout(limit + Duration::from_secs(30));
            if waited == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                stop.store(true, Ordering::Relaxed);
            }
        });
        let stats = relay.run(stop, |_| {
            group.lag().iter().all(|&l| l == 0) || Instant::now() > deadline
        });
        drop(finished);
        stats
    })
    .unwrap()
}

/// A broker with the stream, and a `Buffered` log in `root/log` holding `events` events over
/// `keys` keys (flushed): the start of most tests here.
fn broker_and_log(
    root: &Path,
    events: u64,
    keys: u64,
) -> (Server, PathBuf, Log, BTreeMap<String, u64>) {
    let server = Server::start(&root.join("nats"));
    create_stream(&server.url());
    let log_dir = root.join("log");
    let log = Log::open(
        &log_dir,
        Options::default().durability(Durability::Buffered),
    )
    .unwrap();
    let mut versions = BTreeMap::new();
    append(&log, events, keys, &mut versions);
    log.flush().unwrap();
    (server, log_dir, log, versions)
}

#[test]
fn relays_100000_events_in_order_per_key_with_nothing_missing() {
    let root = tempfile::tempdir().unwrap();
    let (server, log_dir, log, _) = broker_and_log(root.path(), 100_000, 500);
    let started = Instant::now();
    let stats = relay_until_caught_up(&log, RelayConfig::new(&server.url(), STREAM, PREFIX));
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(stats.relayed, 100_000);
    eprintln!(
        "relayed 100,000 events in {seconds:.2} s: {:.0} events/s",
        100_000.0 / seconds
    );
    check(&read_back(&server.url(), 100_000), &log_dir, 100_000);
    log.close().unwrap();
}

#[test]
fn a_stream_that_does_not_exist_is_a_typed_error() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("nats"));
    let log = Log::open(root.path().join("log"), Options::default()).unwrap();
    match Relay::connect(&log, RelayConfig::new(&server.url(), "MISSING", PREFIX)) {
        Err(RelayError::StreamMissing { stream }) => assert_eq!(stream, "MISSING"),
        Err(other) => panic!("expected StreamMissing, got {other}"),
        Ok(_) => panic!("expected StreamMissing, connected"),
    }
}

#[test]
fn a_broker_that_never_answers_is_a_typed_error_within_the_timeout() {
    let root = tempfile::tempdir().unwrap();
    // Accepts connections and says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().take(3) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    let log = Log::open(root.path().join("log"), Options::default()).unwrap();
    let mut config = RelayConfig::new(&format!("nats://127.0.0.1:{port}"), STREAM, PREFIX);
    config.timeout = Duration::from_secs(1);
    let started = Instant::now();
    match Relay::connect(&log, config) {
        Err(RelayError::Connect { .. }) => {}
        Err(other) => panic!("expected Connect, got {other}"),
        Ok(_) => panic!("expected Connect, connected"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // And no broker at all.
    let closed = free_port();
    let config = RelayConfig::new(&format!("nats://127.0.0.1:{closed}"), STREAM, PREFIX);
    assert!(matches!(
        Relay::connect(&log, config),
        Err(RelayError::Connect { .. })
    ));
    drop(accepted);
}

#[test]
fn a_broker_stopped_and_started_again_under_load_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(&root.path().join("nats"));
    let url = server.url();
    create_stream(&url);
    let log_dir = root.path().join("log");
    let log = Log::open(
        &log_dir,
        Options::default().durability(Durability::Buffered),
    )
    .unwrap();
    let mut versions = BTreeMap::new();
    append(&log, 20_000, 200, &mut versions);
    log.flush().unwrap();
    let stop = AtomicBool::new(false);
    let mut config = RelayConfig::new(&url, STREAM, PREFIX);
    config.batch = 200;
    config.timeout = Duration::from_secs(1);
    config.retry_max = Duration::from_millis(500);
    let relay = Relay::connect(&log, config).unwrap();
    let stats = std::thread::scope(|scope| {
        let relaying = scope.spawn(|| relay.run(&stop, |_| false));
        std::thread::sleep(Duration::from_millis(100));
        // Down for a while (a clean stop: a killed server may lose messages it acknowledged
        // but had not written yet), with more events appended meanwhile.
        // SAFETY: kill only sends a signal to the server's PID, which has not been reaped.
        unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = server.child.wait();
        append(&log, 5_000, 200, &mut versions);
        log.flush().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        server = Server::start_on(&root.path().join("nats"), server.port);
        append(&log, 5_000, 200, &mut versions);
        log.flush().unwrap();
        let group = log.group("relay").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while group.lag().iter().any(|&l| l > 0) {
            if relaying.is_finished() {
                panic!("the relay stopped: {:?}", relaying.join().unwrap().err());
            }
            assert!(Instant::now() < deadline, "the relay did not catch up");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        relaying.join().unwrap().unwrap()
    });
    assert!(stats.retries > 0, "the broker was down: {stats:?}");
    check(&read_back(&url, 30_000), &log_dir, 30_000);
    log.close().unwrap();
}

#[test]
fn a_relay_killed_at_random_moments_and_restarted_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("nats"));
    let url = server.url();
    create_stream(&url);
    let log_dir = root.path().join("log");
    {
        let log = Log::open(
            &log_dir,
            Options::default().durability(Durability::Buffered),
        )
        .unwrap();
        let mut versions = BTreeMap::new();
        append(&log, 60_000, 300, &mut versions);
        log.close().unwrap();
    }
    let relay_args = |until_caught_up: bool| relay_command(&log_dir, &url, 100, until_caught_up);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _round in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = relay_args(false).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(30 + seed % 120));
        // SIGKILL by PID: no chance to commit what is in flight.
        let _ = child.kill();
        let _ = child.wait();
    }
    let last = relay_args(true).output().unwrap();
    assert!(last.status.success());
    // The kills left work for the last run (else the rounds tested nothing).
    let said = String::from_utf8_lossy(&last.stdout);
    let relayed: u64 = said
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(relayed > 0, "{said}");
    check(&read_back(&url, 60_000), &log_dir, 60_000);
}

#[test]
fn sigterm_stops_the_relay_cleanly_and_a_restart_resumes_from_its_cursor() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("nats"));
    let url = server.url();
    create_stream(&url);
    let log_dir = root.path().join("log");
    {
        let log = Log::open(
            &log_dir,
            Options::default().durability(Durability::Buffered),
        )
        .unwrap();
        let mut versions = BTreeMap::new();
        append(&log, 40_000, 300, &mut versions);
        log.close().unwrap();
    }
    let relay = |until_caught_up: bool| relay_command(&log_dir, &url, 500, until_caught_up);
    let child = relay(false).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: kill only sends a signal to the child's PID, which has not been reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let stopped = child.wait_with_output().unwrap();
    assert!(stopped.status.success(), "a clean stop exits 0");
    let said = String::from_utf8_lossy(&stopped.stdout).into_owned();
    let first: u64 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    // What it committed is what the log's group says; the restart relays the rest, and the
    // broker sees no duplicate of what the first run committed.
    let last = relay(true).output().unwrap();
    assert!(last.status.success());
    let said = String::from_utf8_lossy(&last.stdout).into_owned();
    let second: u64 = said.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(
        first + second,
        40_000,
        "resumed from the cursor: {first} + {second}"
    );
    check(&read_back(&url, 40_000), &log_dir, 40_000);
}

/// Bug (found by review): an event's own headers went to the broker under their own names, so
/// a header called `Annal-Key` replaced the relay's, a `Nats-` header was acted on by JetStream
/// (`Nats-Expected-Stream: other` made the broker refuse the event). They now travel as
/// `Annal-Header-<name>`.
#[test]
fn event_headers_travel_under_their_own_prefix() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(&root.path().join("nats"));
    create_stream(&server.url());
    let log = Log::open(
        root.path().join("log"),
        Options::default().durability(Durability::Sync),
    )
    .unwrap();
    let event = annal::Event::new(b"payload")
        .header("Annal-Key", "spoofed")
        .header("Nats-Expected-Stream", "another-stream")
        .header("type", "A");
    log.append_to(b"the-key", annal::Expected::Any, &[event])
        .unwrap();
    // Stopped after 20 s if it never catches up (a refused publish is retried forever).
    let relay = Relay::connect(&log, RelayConfig::new(&server.url(), STREAM, PREFIX)).unwrap();
    let group = log.group("relay").unwrap();
    let stop = AtomicBool::new(false);
    let caught_up = std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            stop.store(true, Ordering::Relaxed);
        });
        let result = relay.run(&stop, |_| group.lag().iter().all(|&l| l == 0));
        stop.store(true, Ordering::Relaxed);
        result.is_ok() && group.lag().iter().all(|&l| l == 0)
    });
    assert!(caught_up, "the event was not relayed");
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream.get_stream(STREAM).await.unwrap();
        let message = stream.get_raw_message(1).await.unwrap();
        let headers = message.headers;
        let all = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .map(|v| v.as_str().to_owned())
                .collect()
        };
        assert_eq!(all("Annal-Key"), ["the-key"]);
        assert_eq!(all("Annal-Header-Annal-Key"), ["spoofed"]);
        assert_eq!(all("Annal-Header-Nats-Expected-Stream"), ["another-stream"]);
        assert_eq!(all("Annal-Header-type"), ["A"]);
    });
    log.close().unwrap();
}

#[test]
fn a_message_from_another_publisher_is_taken_as_the_predecessor_and_the_relay_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let (server, log_dir, log, mut versions) = broker_and_log(root.path(), 1_000, 50);
    let relay = Relay::connect(&log, RelayConfig::new(&server.url(), STREAM, PREFIX)).unwrap();
    let group = log.group("relay").unwrap();
    let first = run_until_caught_up(&relay, &group, Duration::from_secs(60));
    assert_eq!(first.relayed, 1_000);
    // Another publisher stores a message: the relay's next publish names a predecessor that is
    // no longer the stream's last message, and the broker refuses it.
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "another-publisher-1");
        headers.insert("Annal-Key", "foreign");
        headers.insert("Annal-Version", "0");
        jetstream
            .publish_with_headers(
                format!("{PREFIX}.foreign"),
                headers,
                payload_of("foreign", 0).into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    });
    append(&log, 1_000, 50, &mut versions);
    log.flush().unwrap();
    let second = run_until_caught_up(&relay, &group, Duration::from_secs(60));
    assert!(group.lag().iter().all(|&l| l == 0), "caught up: {second:?}");
    assert_eq!(second.relayed, 1_000);
    assert!(second.retries >= 1, "the refusal was met: {second:?}");
    check(&read_back(&server.url(), 2_001), &log_dir, 2_001);
    log.close().unwrap();
}
