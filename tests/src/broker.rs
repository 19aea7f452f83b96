//! A real Kafka-protocol broker on loopback for the tests: `nisshi`
//! (Kafka-compatible, Apache-2.0), started as a child process on a free
//! port and killed when dropped.
//!
//! The binary comes from `POSTERIOR_NISSHI`, or the cache that
//! `scripts/setup-nisshi.sh` fills (`$HOME/.cache/posterior/nisshi/bin`).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// Where the broker keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In memory: fast, lost when the broker stops.
    Memory,
    /// A SQLite file that survives broker restarts.
    Sqlite(PathBuf),
}

/// A running broker.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    storage: Storage,
}

/// Path of the `nisshi` binary.
///
/// # Panics
/// When it is not installed, with the command that installs it.
pub fn nisshi_binary() -> PathBuf {
    let path = std::env::var_os("POSTERIOR_NISSHI")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/posterior/nisshi/bin/nisshi"))
        })
        .expect("HOME or POSTERIOR_NISSHI is set");
    assert!(
        path.exists(),
        "the test broker {} is missing: run scripts/setup-nisshi.sh (or scripts/test.sh, which runs it)",
        path.display()
    );
    path
}

impl Broker {
    /// Starts a broker with `storage` on a free loopback port and waits
    /// until it answers metadata requests.
    pub fn start(storage: Storage) -> Self {
        let port = free_port();
        let mut broker = Self {
            child: None,
            port,
            storage,
        };
        broker.spawn();
        broker
    }

    /// `bootstrap.servers` of this broker.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage (after [`Self::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new(nisshi_binary())
            .args(["topic", "create", topic, "--silent", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--partitions")
            .arg(partitions.to_string())
            .status()
            .expect("run nisshi topic create");
        assert!(status.success(), "creating topic {topic} failed");
        // Wait until the broker's metadata shows every partition.
        let consumer = self.consumer();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len())
                });
            if found == Some(partitions as usize) {
                return;
            }
            assert!(Instant::now() < deadline, "topic {topic} never appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Produces `records` (partition, key, value) and waits until the
    /// broker acknowledged all of them.
    pub fn produce<'a>(
        &self,
        topic: &str,
        records: impl IntoIterator<Item = (u32, Vec<u8>, &'a [u8])>,
    ) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("linger.ms", "5")
            .set("batch.num.messages", "10000")
            .set("enable.idempotence", "false")
            .set("acks", "all")
            .create()
            .expect("create producer");
        for (partition, key, value) in records {
            let mut record = BaseRecord::to(topic)
                .partition(partition as i32)
                .key(&key)
                .payload(value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((err, back)) => {
                        assert!(
                            matches!(
                                err.rdkafka_error_code(),
                                Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                            ),
                            "produce failed: {err}"
                        );
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer
            .flush(Duration::from_secs(120))
            .expect("every record acknowledged");
    }

    /// A plain consumer of this broker (for metadata and watermarks).
    pub fn consumer(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "posterior-test-probe")
            .create()
            .expect("create consumer")
    }

    /// High watermark of every partition of `topic`.
    pub fn high_watermarks(&self, topic: &str, partitions: u32) -> Vec<u64> {
        let consumer = self.consumer();
        (0..partitions)
            .map(|p| {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p as i32, Duration::from_secs(10))
                    .expect("fetch watermarks");
                high as u64
            })
            .collect()
    }

    /// Every record of `topic` (partitions `0..partitions`) up to the
    /// current high watermarks, as (partition, key, value) in partition
    /// order.
    pub fn consume_all(&self, topic: &str, partitions: u32) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
        let highs = self.high_watermarks(topic, partitions);
        let consumer = self.consumer();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(topic, p as i32, Offset::Beginning)
                .expect("add partition");
        }
        consumer.assign(&list).expect("assign");
        let mut next = vec![0_u64; partitions as usize];
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        while next.iter().zip(&highs).any(|(n, h)| n < h) {
            assert!(Instant::now() < deadline, "consuming {topic} timed out");
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let p = message.partition() as u32;
            next[p as usize] = message.offset() as u64 + 1;
            out.push((
                p,
                message.key().unwrap_or_default().to_vec(),
                message.payload().unwrap_or_default().to_vec(),
            ));
        }
        out
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        // nisshi resolves a sqlite path against its working directory.
        let (storage, cwd) = match &self.storage {
            Storage::Memory => ("memory://nisshi/".to_owned(), std::env::temp_dir()),
            Storage::Sqlite(path) => {
                let name = path.file_name().expect("a file name").to_string_lossy();
                let dir = path.parent().expect("a directory").to_owned();
                (format!("sqlite://{name}"), dir)
            }
        };
        let child = Command::new(nisshi_binary())
            .current_dir(cwd)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .arg("--silent")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nisshi");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let consumer = self.consumer();
        while consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_err()
        {
            assert!(Instant::now() < deadline, "broker did not answer metadata");
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}
