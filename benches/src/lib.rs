//! Benchmarks live in `benches/`; run them with `cargo bench -p turku-benches`.
//! `compare-ingest.sh` runs turku against stock rsync (and borg/restic if installed).
