//! Catching an identity served twice without a map of every identity: a 64-bit hash per row,
//! and a blocked Bloom filter over the hashes that says which identities were (probably) seen
//! before. Its false positives only send a row to the repeats map; they never drop one.

/// A blocked Bloom filter (all of a key's bits in one 64-byte block, so one cache miss per
/// row instead of seven), sized for the export's expected row count and chained with larger,
/// tighter filters should the estimate prove low; memory follows the export and the
/// false-positive rate stays near 1%.
pub(super) struct Bloom {
    filters: Vec<BloomFilter>,
    next_capacity: u64,
}

/// One cache line of filter bits.
#[derive(Clone, Copy)]
#[repr(align(64))]
pub(super) struct Block([u64; 8]);

pub(super) struct BloomFilter {
    blocks: Vec<Block>,
    capacity: u64,
    inserted: u64,
}

impl BloomFilter {
    pub(super) fn new(capacity: u64, bits_per_row: u64) -> Self {
        let blocks = (capacity * bits_per_row).div_ceil(512).max(1) as usize;
        Self {
            blocks: vec![Block([0; 8]); blocks],
            capacity,
            inserted: 0,
        }
    }

    /// The block and the seven bits of `h` within it.
    pub(super) fn locate(&self, h: u64) -> (usize, [u16; 7]) {
        let block = ((h >> 32).wrapping_mul(self.blocks.len() as u64) >> 32) as usize;
        let bits = std::array::from_fn(|i| (h.rotate_left(9 * i as u32) & 511) as u16);
        (block, bits)
    }

    pub(super) fn contains(&self, h: u64) -> bool {
        let (b, bits) = self.locate(h);
        let block = &self.blocks[b];
        bits.iter()
            .all(|&bit| block.0[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Loads the block of `h` into the cache without waiting on it.
    pub(super) fn touch(&self, h: u64) -> u64 {
        let (b, _) = self.locate(h);
        self.blocks[b].0[0]
    }

    pub(super) fn insert(&mut self, h: u64) {
        let (b, bits) = self.locate(h);
        let block = &mut self.blocks[b];
        for bit in bits {
            block.0[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.inserted += 1;
    }
}

impl Bloom {
    pub(super) fn new(expected: u64) -> Self {
        Self {
            filters: Vec::new(),
            next_capacity: expected.max(1 << 16),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.filters
            .iter()
            .map(|f| f.blocks.len() * std::mem::size_of::<Block>())
            .sum()
    }

    /// Starts loading the blocks of `hashes`; independent loads overlap their cache misses.
    pub(super) fn prefetch(&self, hashes: impl Iterator<Item = u64>) {
        let mut sink = 0;
        for h in hashes {
            for f in &self.filters {
                sink ^= f.touch(h);
            }
        }
        std::hint::black_box(sink);
    }

    /// Inserts `h`; true when it (probably) was there already.
    pub(super) fn check_and_insert(&mut self, h: u64) -> bool {
        if self.filters.iter().any(|f| f.contains(h)) {
            return true;
        }
        if self.filters.last().is_none_or(|f| f.inserted >= f.capacity) {
            // The first filter takes 12 bits a row; later ones 16, so their false positives add
            // little to the first's.
            let per_row = if self.filters.is_empty() { 12 } else { 16 };
            self.filters
                .push(BloomFilter::new(self.next_capacity, per_row));
            self.next_capacity *= 4;
        }
        self.filters
            .last_mut()
            .expect("one filter at least")
            .insert(h);
        false
    }
}
