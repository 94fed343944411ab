//! The compression threads, one set per process: every snapshot writer of every store open
//! in the process hands its batches to the same threads, so a daemon running several
//! backups at once runs (and keeps zstd contexts for) one core's worth of threads per core,
//! not that many per backup. Started on first use and kept for the life of the process.
//!
//! A job carries where its result goes: each writer's pack thread receives its own batches
//! back, compressed, and nothing else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::error::{Result, StoreError};
use crate::format::pack::Compressor;
use crate::format::COMPRESSION_NONE;
use crate::tuning::*;
use crate::write::packer::{compression_threads, Batch};

/// A batch to compress at `level`, and where to send it once compressed.
pub(crate) struct Job {
    pub(crate) batch: Batch,
    pub(crate) level: i32,
    pub(crate) reply: mpsc::Sender<Batch>,
}

/// The process's compression threads.
pub(crate) struct CompressionPool {
    jobs: mpsc::Sender<Job>,
    /// Jobs sent that no thread has taken yet.
    queued: Arc<AtomicUsize>,
    threads: usize,
}

/// Compression threads ever started in this process (tests check that writers share them).
static THREADS_STARTED: AtomicUsize = AtomicUsize::new(0);

static POOL: Mutex<Option<Arc<CompressionPool>>> = Mutex::new(None);

impl CompressionPool {
    /// The process's pool, started on first use.
    pub(crate) fn get() -> Result<Arc<CompressionPool>> {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pool.as_ref() {
            return Ok(pool.clone());
        }
        let started = Arc::new(CompressionPool::start(compression_threads())?);
        *pool = Some(started.clone());
        Ok(started)
    }

    fn start(threads: usize) -> Result<CompressionPool> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let queued = Arc::new(AtomicUsize::new(0));
        for _ in 0..threads {
            let (rx, queue) = (job_rx.clone(), queued.clone());
            std::thread::Builder::new()
                .name("turku-compress".into())
                .spawn(move || compression_worker(&rx, &queue))
                .map_err(|e| StoreError::Io {
                    op: "start compression thread",
                    path: std::path::PathBuf::new(),
                    source: e,
                })?;
            THREADS_STARTED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(CompressionPool {
            jobs,
            queued,
            threads,
        })
    }

    /// Queues `job`; it comes back through its `reply` channel.
    pub(crate) fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.jobs.send(job).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }

    /// Whether every thread already has a job waiting: a new one would only wait.
    pub(crate) fn saturated(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.threads
    }

    #[cfg(test)]
    pub(crate) fn threads_started() -> usize {
        THREADS_STARTED.load(Ordering::Relaxed)
    }
}

fn compression_worker(jobs: &Mutex<mpsc::Receiver<Job>>, queued: &AtomicUsize) {
    // Linux keeps a nice value per thread. Failing to lower our own priority is harmless.
    let _ = rustix::process::setpriority_process(None, COMPRESSION_THREAD_NICE);
    // One context per level in use: stores of one process may differ.
    let mut compressors: Vec<(i32, Compressor)> = Vec::new();
    loop {
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job {
            mut batch,
            level,
            reply,
        }) = next
        else {
            return;
        };
        queued.fetch_sub(1, Ordering::AcqRel);
        let at = match compressors.iter().position(|(l, _)| *l == level) {
            Some(at) => Some(at),
            None => match Compressor::new(level) {
                Ok(c) => {
                    compressors.push((level, c));
                    Some(compressors.len() - 1)
                }
                Err(e) => {
                    tracing::warn!("storing a batch uncompressed: {e}");
                    None
                }
            },
        };
        for blob in &mut batch.blobs {
            match at {
                Some(at) => {
                    let raw = std::mem::take(&mut blob.bytes);
                    let (compression, stored) = compressors[at].1.compress_owned(raw);
                    blob.compression = compression;
                    blob.bytes = stored;
                }
                None => blob.compression = COMPRESSION_NONE,
            }
        }
        // The writer may be gone (stopped, failed); its batch goes with it.
        let _ = reply.send(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CompressionMode, Store, StoreConfig};

    /// A daemon runs each backup on its own thread, with its own handle or one shared.
    #[test]
    fn a_store_handle_and_a_writer_can_move_between_threads() {
        fn send_and_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_and_sync::<Store>();
        send::<crate::SnapshotWriter>();
    }

    /// Two backups in one process, of two stores with different zstd levels, writing at the
    /// same time: both compress through the same threads, so the process never starts more
    /// than one set, and each store gets back only its own blobs, compressed.
    #[test]
    fn concurrent_writers_of_different_stores_share_one_set_of_compression_threads() {
        let dir = tempfile::tempdir().unwrap();
        let config = |zstd_level| StoreConfig {
            compression: CompressionMode::Inline,
            zstd_level,
            ..StoreConfig::default()
        };
        let stores = [
            Store::init(&dir.path().join("a"), config(1)).unwrap(),
            Store::init(&dir.path().join("b"), config(3)).unwrap(),
        ];
        let mut writers: Vec<_> = stores
            .iter()
            .map(|s| s.begin_snapshot("m", "s").unwrap())
            .collect();
        let text = |w: usize, f: usize| format!("writer {w} file {f} ").repeat(20_000);
        for f in 0..6 {
            for (w, writer) in writers.iter_mut().enumerate() {
                let mut file = writer
                    .add_file(format!("f{f}").as_bytes(), Default::default(), 0)
                    .unwrap();
                file.write_content(text(w, f).as_bytes()).unwrap();
                file.finish().unwrap();
            }
        }
        let snaps: Vec<_> = writers.into_iter().map(|w| w.commit().unwrap()).collect();
        assert!(
            CompressionPool::threads_started() <= compression_threads(),
            "{} compression threads started for {} cores' worth",
            CompressionPool::threads_started(),
            compression_threads()
        );
        for (w, (store, snap)) in stores.iter().zip(&snaps).enumerate() {
            assert!(snap.stats.new_stored_bytes < snap.stats.new_bytes / 10);
            for f in 0..6 {
                let entry = store.lookup(snap, format!("f{f}").as_bytes()).unwrap();
                let mut content = Vec::new();
                std::io::Read::read_to_end(&mut store.open_file(&entry).unwrap(), &mut content)
                    .unwrap();
                assert_eq!(content, text(w, f).as_bytes());
            }
        }
    }
}
