//! The relay's throughput and latency against a real `nats-server` on loopback (started here,
//! stopped by PID): `cargo bench -p annal-relay`.
//!
//! 1. A plain publisher: 100,000 messages of 256 bytes, acknowledgements pipelined as the
//!    relay's are (1,000 in flight): what the broker accepts on this machine, in this run.
//! 2. The relay: the same number of 256-byte events from an annal log, relayed until caught up,
//!    as a share of (1).
//! 3. Latency: `Sync` appends one at a time while the relay runs; from each append's return to
//!    the moment a plain NATS subscriber of the stream's subjects receives it (JetStream
//!    forwards a message once it has stored it, as it acknowledges it), p50 and p99.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use annal::{Durability, Event, Log, Options};
use annal_relay::{Relay, RelayConfig};
use futures::StreamExt;

const EVENTS: u64 = 100_000;
const PAYLOAD: usize = 256;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("nats-server");
    let mut command = Command::new(binary);
    command
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(root.path().join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the child between fork and exec and only calls prctl, which is
        // async-signal-safe: the server dies with this process, however it ends.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
    }
    let _server = Server(
        command
            .spawn()
            .expect("start nats-server (apt-get install nats-server)"),
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let payload = vec![b'x'; PAYLOAD];

    // 1. A plain publisher.
    let plain = runtime.block_on(async {
        let client = async_nats::connect(url.as_str()).await.expect("connect");
        let jetstream = async_nats::jetstream::new(client);
        for (name, subjects) in [("PLAIN", "plain.>"), ("EVENTS", "events.>")] {
            jetstream
                .create_stream(async_nats::jetstream::stream::Config {
                    name: name.to_owned(),
                    subjects: vec![subjects.to_owned()],
                    ..Default::default()
                })
                .await
                .expect("stream");
        }
        let started = Instant::now();
        let mut in_flight = std::collections::VecDeque::new();
        for i in 0..EVENTS {
            let future = jetstream
                .publish(format!("plain.{}", i % 8), payload.clone().into())
                .await
                .expect("publish");
            in_flight.push_back(future);
            if in_flight.len() >= 1_000 {
                in_flight.pop_front().expect("one").await.expect("ack");
            }
        }
        while let Some(future) = in_flight.pop_front() {
            future.await.expect("ack");
        }
        EVENTS as f64 / started.elapsed().as_secs_f64()
    });

    // 2. The relay, from a log of the same number of events.
    let log_dir = root.path().join("log");
    let log = Log::open(
        &log_dir,
        Options::default().durability(Durability::Buffered),
    )
    .expect("open");
    for n in 0..EVENTS / 100 {
        let key = format!("order-{:05}", n % 1_000);
        let batch: Vec<Event<'_>> = (0..100).map(|_| Event::new(&payload)).collect();
        log.append_batch(key.as_bytes(), &batch).expect("append");
    }
    log.flush().expect("flush");
    let relayed = {
        let mut config = RelayConfig::new(&url, "EVENTS", "events");
        if let Some(batch) = std::env::var("ANNAL_RELAY_BATCH")
            .ok()
            .and_then(|b| b.parse().ok())
        {
            config.batch = batch;
            config.max_in_flight = batch;
        }
        let batch = config.batch;
        let relay = Relay::connect(&log, config).expect("relay");
        let group = log.group("relay").expect("group");
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let stats = relay
            .run(&stop, |_| group.lag().iter().all(|&l| l == 0))
            .expect("run");
        (
            stats.relayed as f64 / started.elapsed().as_secs_f64(),
            batch,
        )
    };
    let (relayed, batch) = relayed;
    log.close().expect("close");
    println!(
        "\n== annal-relay against nats-server on loopback ({EVENTS} events of {PAYLOAD} bytes)"
    );
    println!("plain JetStream publisher, 1,000 acks in flight: {plain:.0} events/s");
    println!(
        "relay from an annal log (batches of {batch}, a commit after each batch's acks; \
         ANNAL_RELAY_BATCH sets it): {relayed:.0} events/s = {:.0}% of the plain publisher",
        100.0 * relayed / plain
    );

    // 3. Latency from a Sync append's return to the broker forwarding the stored message.
    let log = Log::open(&log_dir, Options::default().durability(Durability::Sync)).expect("open");
    let stop = AtomicBool::new(false);
    let rounds = 500;
    let mut samples = Vec::with_capacity(rounds);
    std::thread::scope(|scope| {
        let relaying = scope.spawn(|| {
            let relay =
                Relay::connect(&log, RelayConfig::new(&url, "EVENTS", "events")).expect("relay");
            relay.run(&stop, |_| false).expect("run")
        });
        runtime.block_on(async {
            let client = async_nats::connect(url.as_str()).await.expect("connect");
            let mut subscriber = client.subscribe("events.>").await.expect("subscribe");
            client.flush().await.expect("flush");
            // Skip what the first relay published, if the subscription sees any of it late.
            for i in 0..rounds {
                let key = format!("latency-{i}");
                let appended = log.append(key.as_bytes(), &payload[..]).expect("append");
                let at = Instant::now();
                loop {
                    let message = subscriber.next().await.expect("message");
                    let offset = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Annal-Offset"))
                        .map(|v| v.as_str().to_owned());
                    let partition = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Annal-Partition"))
                        .map(|v| v.as_str().to_owned());
                    if offset == Some(appended.offset.to_string())
                        && partition == Some(appended.partition.to_string())
                    {
                        samples.push(at.elapsed());
                        break;
                    }
                }
            }
        });
        stop.store(true, Ordering::Relaxed);
        relaying.join().expect("relay thread");
    });
    log.close().expect("close");
    samples.sort_unstable();
    println!(
        "latency from a Sync append's return to the stored message reaching a subscriber: \
         p50 {:.0} us, p99 {:.0} us ({rounds} appends, one at a time)",
        samples[samples.len() / 2].as_secs_f64() * 1e6,
        samples[samples.len() * 99 / 100].as_secs_f64() * 1e6
    );
}
