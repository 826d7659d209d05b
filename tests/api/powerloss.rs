//! Power loss: the gateway runs under load with `tests/powerloss/shim.c` preloaded, which
//! logs every write to the store's files and the bytes it replaced, and cuts the process
//! at a chosen write or sync. The harness then puts the files back as a power cut would
//! have left them — every write that no completed fsync covered undone, or (a disk that
//! wrote some back on its own) a random part of them kept — and asserts that SQLite opens
//! the store intact and that every event the gateway acknowledged is in it.
//!
//! Bounded for `.ci/run`: 20 cut points by default (`SESSIONGATE_POWERLOSS_CUTS`), each a
//! short run. A control run with `synchronous = "normal"`, which answers before the WAL is
//! on disk, must lose acknowledged events here: the harness can see a loss.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use sessiongate::store::Store;
use sessiongate::store::settings::Synchronous;
use sessiongate::store::sqlite::SqliteStore;

use crate::helpers::*;

const SHIM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/powerloss/shim.c");
/// Acknowledged events a calibration run takes: cut points are spread over its writes.
const CALIBRATION_ACKS: usize = 400;
/// The WAL is started over at 1 MiB, so that checkpoints and restarts happen within a run.
const WAL_MIB: u32 = 1;

/// Compiles the shim with the machine's C compiler (the one Rust links with). Without one,
/// the test skips outside CI with a printed reason and fails under `CI=true`.
fn shim(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("powerloss.so");
    let compiled = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(SHIM)
        .args(["-ldl", "-lpthread"])
        .output();
    match compiled {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!(
            "the power-loss shim does not compile:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "cc must be on PATH in CI: the power-loss harness may not be skipped ({e})"
            );
            eprintln!("skipping the power-loss harness: no C compiler to build its shim ({e})");
            None
        }
    }
}

/// One record of the shim's log (its layout is described in `shim.c`).
#[derive(Debug)]
enum Record {
    Open {
        id: u32,
        path: PathBuf,
    },
    Write {
        id: u32,
        offset: u64,
        size_before: u64,
        old: Vec<u8>,
        new: Vec<u8>,
    },
    Truncate {
        id: u32,
        len: u64,
        size_before: u64,
        old: Vec<u8>,
    },
    /// A sync that returned: it covers the records logged before `before`.
    Sync {
        id: u32,
        before: u64,
    },
    Unlink {
        id: u32,
    },
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u64()? as usize;
        Some(self.take(n)?.to_vec())
    }
    fn record(&mut self) -> Option<Record> {
        let kind = self.take(1)?[0];
        Some(match kind {
            b'O' => {
                let id = self.u32()?;
                let n = self.u32()? as usize;
                let path = String::from_utf8(self.take(n)?.to_vec()).unwrap();
                Record::Open {
                    id,
                    path: path.into(),
                }
            }
            b'W' => Record::Write {
                id: self.u32()?,
                offset: self.u64()?,
                size_before: self.u64()?,
                old: self.bytes()?,
                new: self.bytes()?,
            },
            b'T' => Record::Truncate {
                id: self.u32()?,
                len: self.u64()?,
                size_before: self.u64()?,
                old: self.bytes()?,
            },
            b'S' => Record::Sync {
                id: self.u32()?,
                before: self.u64()?,
            },
            b'U' => Record::Unlink { id: self.u32()? },
            other => panic!("unknown record {other:#x} in the shim's log"),
        })
    }
}

/// Every complete record of the log (one being written when a run was read is left out).
fn records(log: &Path) -> Vec<Record> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let mut reader = Reader(&bytes);
    std::iter::from_fn(|| reader.record()).collect()
}

/// Writes, truncates and syncs in a log: what a cut point counts.
fn operations(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| !matches!(r, Record::Open { .. } | Record::Unlink { .. }))
        .count()
}

/// What a power cut did to the files.
#[derive(Debug, Default)]
struct Cut {
    /// Writes and truncates no completed sync covered, all undone first…
    unsynced: usize,
    /// …of which these were written back anyway (a torn cut).
    kept: usize,
}

/// Puts the files back as a power cut after the last logged record would leave them: each
/// write or truncate that no completed sync of its file covered is undone, newest first;
/// then, in their order, those `keep` picks (given the file) are done again, as a disk that
/// had written some of them back on its own would hold them.
fn cut_power(records: &[Record], mut keep: impl FnMut(&Path) -> bool) -> Cut {
    let mut paths = HashMap::new();
    let mut pending: HashMap<u32, Vec<(u64, &Record)>> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        let index = index as u64;
        match record {
            Record::Open { id, path } => {
                paths.insert(*id, path.clone());
            }
            Record::Write { id, .. } | Record::Truncate { id, .. } => {
                pending.entry(*id).or_default().push((index, record))
            }
            Record::Sync { id, before } => {
                if let Some(list) = pending.get_mut(id) {
                    list.retain(|(i, _)| i >= before);
                }
            }
            Record::Unlink { id } => {
                pending.remove(id);
            }
        }
    }
    let mut cut = Cut::default();
    for (id, list) in pending {
        let Ok(file) = std::fs::OpenOptions::new().write(true).open(&paths[&id]) else {
            continue; // gone: its unlink is taken as durable
        };
        for (_, record) in list.iter().rev() {
            cut.unsynced += 1;
            // Both leave the file at `size_before`, with `old` back where it was replaced.
            let (at, size_before, old) = match record {
                Record::Write {
                    offset,
                    size_before,
                    old,
                    ..
                } => (offset, size_before, old),
                Record::Truncate {
                    len,
                    size_before,
                    old,
                    ..
                } => (len, size_before, old),
                _ => unreachable!("only writes and truncates are pending"),
            };
            file.set_len(*size_before).unwrap();
            file.write_all_at(old, *at).unwrap();
        }
        for (_, record) in &list {
            if !keep(&paths[&id]) {
                continue;
            }
            cut.kept += 1;
            match record {
                Record::Write { offset, new, .. } => file.write_all_at(new, *offset).unwrap(),
                Record::Truncate { len, .. } => file.set_len(*len).unwrap(),
                _ => unreachable!("only writes and truncates are pending"),
            }
        }
    }
    cut
}

/// How a run's power cut treats the writes no sync covered.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// Every one is lost.
    All,
    /// Each is lost or kept at random (seeded).
    Torn(u64),
    /// The WAL's are kept, the database file's lost: what a WAL started over before the
    /// checkpoint that emptied it was on disk would leave without the checkpoint's data.
    WalKept,
}

/// One gateway run under the shim, in its own directory.
struct Run {
    dir: tempfile::TempDir,
    synchronous: &'static str,
}

impl Run {
    /// A store created and closed cleanly first, so each run starts from a durable file.
    async fn new(synchronous: &'static str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let store = SqliteStore::open_with_wal(&data.join("gate.db"), Synchronous::Full, WAL_MIB)
            .await
            .unwrap();
        store.close().await;
        Run { dir, synchronous }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("writes.log")
    }

    /// The file whose creation cuts a run started with [`At::AfterAcknowledged`].
    fn trigger(&self) -> PathBuf {
        self.dir.path().join("cut-now")
    }

    /// Starts the gateway with the shim preloaded, to cut itself at `cut` (none: it runs
    /// until killed). `None` when it died before it listened.
    fn start(&self, shim: &Path, cut: Option<At>) -> Option<GatewayProcess> {
        let config = gateway_config(
            self.dir.path(),
            &format!(
                "url = \"sqlite://{}\"\nsynchronous = \"{}\"\nwal_size_mib = {WAL_MIB}",
                self.data().join("gate.db").display(),
                self.synchronous
            ),
            "",
        );
        let path = |p: &Path| p.to_str().expect("a UTF-8 temporary path").to_owned();
        let (data, log, trigger) = (path(&self.data()), path(&self.log()), path(&self.trigger()));
        let cut = match cut {
            Some(At::Operation(n)) => Some(("POWERLOSS_CUT", n.to_string())),
            Some(At::AfterAcknowledged(_)) => Some(("POWERLOSS_TRIGGER", trigger)),
            Some(At::AfterWalHeader(n)) => Some(("POWERLOSS_CUT_AFTER_WAL_HEADER", n.to_string())),
            None => None,
        };
        let mut env = vec![
            ("TEST_PATHORS_TOKEN", PATHORS_TOKEN),
            ("LD_PRELOAD", shim.to_str().expect("a UTF-8 temporary path")),
            ("POWERLOSS_DIR", &data),
            ("POWERLOSS_LOG", &log),
        ];
        if let Some((name, value)) = &cut {
            env.push((name, value));
        }
        GatewayProcess::try_start(&config, &env)
    }

    /// Eight senders post distinct sessions until the gateway is gone (or `enough` are
    /// acknowledged); returns the acknowledged event ids. With `cut_after`, the run is cut
    /// the moment that many are acknowledged.
    async fn load(
        &self,
        gateway: &mut GatewayProcess,
        enough: usize,
        cut_after: Option<usize>,
    ) -> Vec<String> {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::new();
        let url = gateway.url("/ingest/pathors");
        let tag = self
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let senders: Vec<_> = (0..8)
            .map(|worker| {
                let (client, url, tag) = (client.clone(), url.clone(), tag.clone());
                let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
                let trigger = self.trigger();
                tokio::spawn(async move {
                    for i in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let body = call_ended(&format!("cut-{tag}-{worker}-{i}"));
                        let sent = client
                            .post(&url)
                            .header("authorization", PATHORS_TOKEN)
                            .body(body)
                            .send()
                            .await;
                        let Ok(response) = sent else {
                            // The gateway died under this request: not acknowledged.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        if response.status().as_u16() == 202
                            && let Ok(answer) = response.json::<Value>().await
                        {
                            let id = answer["id"].as_str().unwrap().to_owned();
                            let mut acknowledged = acknowledged.lock().unwrap();
                            acknowledged.push(id);
                            if cut_after == Some(acknowledged.len()) {
                                std::fs::write(&trigger, b"").unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if gateway.child.try_wait().unwrap().is_some()
                || acknowledged.lock().unwrap().len() >= enough
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the run reached neither its cut point nor {enough} acknowledged events in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::SeqCst);
        for sender in senders {
            sender.await.unwrap();
        }
        acknowledged.lock().unwrap().clone()
    }

    /// Cuts the power after the run, then opens the store as the next start would and
    /// returns the acknowledged events it does not hold.
    async fn recover(&self, loss: Loss, acknowledged: &[String]) -> (Cut, Vec<String>) {
        let records = records(&self.log());
        let cut = match loss {
            Loss::All => cut_power(&records, |_| false),
            Loss::Torn(seed) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                cut_power(&records, |_| rng.random_bool(0.5))
            }
            Loss::WalKept => cut_power(&records, |path| path.to_string_lossy().ends_with("-wal")),
        };
        // The shared-memory index holds nothing durable; after a cut its content is
        // arbitrary, and SQLite rebuilds it from the WAL.
        std::fs::remove_file(self.data().join("gate.db-shm")).ok();
        let db = self.data().join("gate.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .unwrap();
            assert_eq!(check, "ok", "the store is damaged after the cut ({cut:?})");
        }
        let store = SqliteStore::open(&db, Synchronous::Full).await.unwrap();
        let mut lost = Vec::new();
        for id in acknowledged {
            if store.event(id).await.unwrap().is_none() {
                lost.push(id.clone());
            }
        }
        store.close().await;
        (cut, lost)
    }
}

/// Where a run is cut.
#[derive(Debug, Clone, Copy)]
enum At {
    /// Just before its n-th write, truncate or sync.
    Operation(usize),
    /// At its next write, truncate or sync once this many events are acknowledged.
    AfterAcknowledged(usize),
    /// Two operations after the n-th WAL header is written: n = 1 is the WAL's creation,
    /// each later one the WAL started over after a checkpoint.
    AfterWalHeader(usize),
}

/// One cut: a run under load that is cut `at` a point, the power cut, recovery.
struct Outcome {
    at: At,
    loss: Loss,
    acknowledged: usize,
    cut: Cut,
    lost: Vec<String>,
}

async fn cut_at(shim: &Path, synchronous: &'static str, at: At, loss: Loss) -> Outcome {
    let run = Run::new(synchronous).await;
    let acknowledged = match run.start(shim, Some(at)) {
        Some(mut gateway) => {
            let cut_after = match at {
                At::AfterAcknowledged(n) => Some(n),
                At::Operation(_) | At::AfterWalHeader(_) => None,
            };
            let acknowledged = run.load(&mut gateway, usize::MAX, cut_after).await;
            let status = gateway.child.wait().unwrap();
            assert_eq!(
                status.signal(),
                Some(9),
                "the run cut at {at:?} ended otherwise than by its cut: {status}"
            );
            acknowledged
        }
        None => Vec::new(),
    };
    if let At::Operation(n) = at {
        let logged = operations(&records(&run.log()));
        assert!(
            logged < n,
            "the log holds {logged} operations, past the cut at {n}"
        );
    }
    let (cut, lost) = run.recover(loss, &acknowledged).await;
    Outcome {
        at,
        loss,
        acknowledged: acknowledged.len(),
        cut,
        lost,
    }
}

/// A run without a cut, killed once `CALIBRATION_ACKS` are acknowledged: how many
/// operations starting takes, how many the load after it, and (a kill at the end of the
/// load is a cut too) the acknowledged events that cut lost.
async fn calibrate(shim: &Path, synchronous: &'static str) -> (usize, usize, Vec<String>) {
    let run = Run::new(synchronous).await;
    let mut gateway = run
        .start(shim, None)
        .expect("the gateway starts under the shim");
    let started = operations(&records(&run.log()));
    let acknowledged = run.load(&mut gateway, CALIBRATION_ACKS, None).await;
    gateway.kill_9();
    let log = records(&run.log());
    let total = operations(&log);
    // The load checkpointed and started the WAL over (its header, at offset 0, written
    // again), so cut points fall into both.
    let mut paths = HashMap::new();
    let (mut restarts, mut checkpointed, mut wal_bytes) = (0, 0, 0);
    for record in &log {
        match record {
            Record::Open { id, path } => {
                paths.insert(*id, path.to_string_lossy().into_owned());
            }
            Record::Write {
                id, offset, new, ..
            } if paths[id].ends_with("-wal") => {
                wal_bytes += new.len();
                if *offset == 0 {
                    restarts += 1;
                }
            }
            Record::Write { id, .. } if paths[id].ends_with(".db") => checkpointed += 1,
            _ => {}
        }
    }
    assert!(
        restarts >= 2 && checkpointed > 0,
        "the calibration load did not reach a WAL restart: {restarts} WAL headers, {checkpointed} database writes"
    );
    println!(
        "calibration ({synchronous}): {started} operations to start, {total} with {} acknowledged events, \
         {checkpointed} database-file writes, the WAL begun {restarts} times, {} WAL bytes per acknowledged event",
        acknowledged.len(),
        wal_bytes / acknowledged.len().max(1)
    );
    let (_, lost) = run.recover(Loss::All, &acknowledged).await;
    (started, total, lost)
}

/// `n` cut points spread over the operations of the load, from its first one on.
fn cut_points(started: usize, total: usize, n: usize) -> Vec<At> {
    let span = total.saturating_sub(started).max(n);
    (0..n)
        .map(|i| At::Operation(started + 1 + span * i / n))
        .collect()
}

fn report(outcomes: &[Outcome]) {
    for o in outcomes {
        println!(
            "cut {:<24} {:<9} {:>4} acknowledged, {:>4} unsynced writes undone, {:>4} kept, {} lost",
            format!("{:?}", o.at),
            format!("{:?}", o.loss),
            o.acknowledged,
            o.cut.unsynced,
            o.cut.kept,
            o.lost.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_power_cut_at_any_of_many_points() {
    let tools = tempfile::tempdir().unwrap();
    let Some(shim) = shim(tools.path()) else {
        return;
    };
    let cuts = std::env::var("SESSIONGATE_POWERLOSS_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let (started, total, lost) = calibrate(&shim, "full").await;
    assert!(
        lost.is_empty(),
        "a kill at the end of the calibration lost {lost:?}"
    );
    let mut outcomes = Vec::new();
    // Right after an acknowledgement, the moment an answer that ran ahead of fsync shows.
    let acknowledged = [1, 50, 150, 300].map(At::AfterAcknowledged);
    for (i, at) in cut_points(started, total, cuts)
        .into_iter()
        .chain(acknowledged)
        .enumerate()
    {
        let loss = if i % 2 == 0 {
            Loss::All
        } else {
            Loss::Torn(i as u64)
        };
        outcomes.push(cut_at(&shim, "full", at, loss).await);
    }
    // Just after the WAL is started over, with the WAL's writes on disk and the database
    // file's lost: the restart must not have overtaken the checkpoint's own fsync.
    for n in 2..=4 {
        outcomes.push(cut_at(&shim, "full", At::AfterWalHeader(n), Loss::WalKept).await);
    }
    report(&outcomes);
    let lost: Vec<_> = outcomes.iter().flat_map(|o| &o.lost).collect();
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    // The cuts landed under load, with writes in flight to lose.
    let acknowledged: usize = outcomes.iter().map(|o| o.acknowledged).sum();
    let unsynced: usize = outcomes.iter().map(|o| o.cut.unsynced).sum();
    assert!(
        acknowledged >= cuts * CALIBRATION_ACKS / 4 && unsynced > 0,
        "the cuts did not land under load: {acknowledged} acknowledged, {unsynced} writes undone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_sees_the_loss_when_answers_run_ahead_of_fsync() {
    let tools = tempfile::tempdir().unwrap();
    let Some(shim) = shim(tools.path()) else {
        return;
    };
    // `synchronous = "normal"` answers once the commit is in the page cache; a cut loses
    // what the last checkpoint had not synced.
    let mut outcomes = Vec::new();
    for n in [50, 150, 300] {
        outcomes.push(cut_at(&shim, "normal", At::AfterAcknowledged(n), Loss::All).await);
    }
    report(&outcomes);
    // Each cut loses what was answered since the checkpointer last synced the WAL (every
    // 100 ms), unless that sync fell between the last answer and the cut: not at all three.
    assert!(
        outcomes.iter().any(|o| !o.lost.is_empty()),
        "no cut right after an acknowledgement lost anything although no answer waited for fsync"
    );
}
