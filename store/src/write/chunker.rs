//! Content-defined chunking: FastCDC v2020 (normalisation level 1) with the store's
//! min/avg/max, fixed at `init`.

/// FastCDC v2020 parameters with the normalised masks precomputed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    pub(crate) fn new(config: &crate::StoreConfig) -> Self {
        let avg = config.chunk_avg as usize;
        let (mask_s, mask_l) =
            fastcdc::v2020::select_masks(avg, fastcdc::v2020::Normalization::Level1);
        Chunker {
            min: config.chunk_min as usize,
            avg,
            max: config.chunk_max as usize,
            mask_s,
            mask_l,
        }
    }

    /// Length of the next chunk at the start of `data`. With fewer than `max` bytes this may
    /// return `data.len()`, so callers only ask with `max` bytes buffered or at end of file.
    pub(crate) fn cut(&self, data: &[u8]) -> usize {
        let (_, len) = fastcdc::v2020::cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len.max(1).min(data.len())
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// Lengths of the chunks FastCDC cuts `data` into under `config` (for benchmarks and tools;
/// the writer applies the same cuts as bytes stream in).
pub fn chunk_lengths(config: &crate::StoreConfig, data: &[u8]) -> Vec<usize> {
    let chunker = Chunker::new(config);
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = chunker.cut(&data[at..]);
        out.push(len);
        at += len;
    }
    out
}
