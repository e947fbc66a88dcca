//! Counting what the lake asks of its store, so a cycle's cost can be seen (and measured by the
//! benchmark) as requests and bytes rather than guessed from its wall time.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::LakeTraffic;

#[derive(Debug, Default)]
pub(super) struct Counters {
    lists: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    deletes: AtomicU64,
}

impl Counters {
    pub(super) fn listed(&self) {
        self.lists.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn got(&self, bytes: usize) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn put(&self, bytes: usize) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn deleted(&self) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> LakeTraffic {
        LakeTraffic {
            lists: self.lists.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            get_bytes: self.get_bytes.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            put_bytes: self.put_bytes.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
        }
    }
}
