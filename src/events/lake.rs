//! What writing a window cost the lake: the store's requests and bytes, and how many rows the
//! rewritten partitions held against the rows the window delivered (its write amplification).
//! A steady cycle should cost in proportion to what changed, not to the size of the lake.

use metrics::counter;

use super::InternalEvent;
use crate::model::LakeTraffic;
use crate::product::Product;

pub struct WriteCost<'a> {
    pub product: Product,
    pub window: &'a str,
    pub traffic: LakeTraffic,
    /// Rows the window delivered (read from its export).
    pub delivered: u64,
    /// Partitions rewritten, and the rows and bytes they hold now.
    pub rewritten: usize,
    pub rewritten_rows: u64,
    pub rewritten_bytes: u64,
    /// Partitions whose replaced days came back unchanged: neither read nor written.
    pub unchanged: usize,
}

impl InternalEvent for WriteCost<'_> {
    fn emit(self) {
        let t = self.traffic;
        tracing::info!(
            product = %self.product,
            window = self.window,
            delivered = self.delivered,
            partitions_rewritten = self.rewritten,
            partitions_unchanged = self.unchanged,
            rows_rewritten = self.rewritten_rows,
            bytes_rewritten = self.rewritten_bytes,
            lists = t.lists,
            gets = t.gets,
            get_bytes = t.get_bytes,
            puts = t.puts,
            put_bytes = t.put_bytes,
            deletes = t.deletes,
            "lake write cost"
        );
        let p = self.product.config_name();
        counter!("dpss_sync_partitions_unchanged_total", "product" => p)
            .increment(self.unchanged as u64);
        counter!("dpss_sync_rewritten_rows_total", "product" => p).increment(self.rewritten_rows);
        for (op, n) in [
            ("list", t.lists),
            ("get", t.gets),
            ("put", t.puts),
            ("delete", t.deletes),
        ] {
            counter!("dpss_sync_lake_requests_total", "product" => p, "op" => op).increment(n);
        }
    }
}
