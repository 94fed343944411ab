//! Streaming reads of file content: one chunk in memory at a time, every chunk verified.

use std::io::{self, Read, Seek, SeekFrom};

use crate::error::{Result, StoreError};
use crate::format::tree::{ChunkRef, EntryData, TreeEntry};
use crate::read::chunks::ChunkReader;
use crate::store::Store;

/// Reads a stored file; implements `Read` and `Seek` and random access with `read_at`.
pub struct FileReader {
    chunks: Vec<ChunkRef>,
    /// Start offset of each chunk.
    starts: Vec<u64>,
    size: u64,
    pos: u64,
    /// Holds the last chunk read: runs of one chunk (zeros) are fetched once.
    reader: ChunkReader,
    /// Plaintext bytes of the chunks fetched so far (each fetch reads, decompresses and
    /// hashes a whole chunk, however little of it the caller wanted).
    loaded: u64,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl FileReader {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Plaintext bytes of the chunks this reader has fetched (read, decompressed and
    /// verified). Reads that jump between chunks fetch a whole chunk each time: a caller
    /// serving a peer's random accesses (an rsync basis) bounds its work with this.
    pub fn loaded_bytes(&self) -> u64 {
        self.loaded
    }

    fn chunk(&mut self, index: usize) -> Result<&[u8]> {
        let c = &self.chunks[index];
        if !self.reader.holds(c) {
            self.loaded += u64::from(c.len);
        }
        self.reader.read(c)
    }

    /// The chunk holding `offset` (which is inside the file) and the offset within it.
    fn locate(&self, offset: u64) -> (usize, usize) {
        // The last chunk starting at or before `offset`: a zero-length chunk shares its start
        // with the next one, and taking it would read as the end of the file.
        let index = self
            .starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1);
        (index, (offset - self.starts[index]) as usize)
    }

    /// The rest of the chunk at the current position (verified), advancing past it; `None`
    /// at end of file. Lets a caller see whole chunks, e.g. to leave holes for zero runs.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let (index, within) = self.locate(self.pos);
        self.chunk(index)?;
        self.pos = self.starts[index] + u64::from(self.chunks[index].len);
        Ok(Some(&self.reader.held()[within..]))
    }

    /// The rest of the chunk at the current position (verified), without advancing:
    /// empty at end of file. A caller that can use the bytes where they are (framing them
    /// for the wire) takes what it wants and [`Self::consume`]s that, instead of having
    /// them copied into a buffer of its own first.
    pub fn peek(&mut self) -> Result<&[u8]> {
        if self.pos >= self.size {
            return Ok(&[]);
        }
        let (index, within) = self.locate(self.pos);
        Ok(&self.chunk(index)?[within..])
    }

    /// Advances past `n` bytes (of what [`Self::peek`] showed).
    pub fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n as u64).min(self.size);
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at end of file.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let (index, within) = self.locate(offset);
        let data = self.chunk(index)?;
        let n = buf.len().min(data.len() - within);
        buf[..n].copy_from_slice(&data[within..within + n]);
        Ok(n)
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(self.pos, buf).map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            )),
        }
    }
}

impl Store {
    /// Opens a reader over a chunk list.
    pub fn open_chunks(&self, chunks: &[ChunkRef]) -> FileReader {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut size = 0u64;
        for c in chunks {
            starts.push(size);
            size += u64::from(c.len);
        }
        FileReader {
            chunks: chunks.to_vec(),
            starts,
            size,
            pos: 0,
            reader: ChunkReader::new(self),
            loaded: 0,
        }
    }

    /// Opens a reader over a regular file entry, taking over what `spent` (a reader done
    /// with its file) keeps: its open packs, buffers and held chunk. A restore opens one
    /// reader per file; most files are one chunk, and opening their pack afresh each time
    /// was a system call pair per file.
    pub fn reopen_file(&self, entry: &TreeEntry, spent: FileReader) -> Result<FileReader> {
        let EntryData::File { chunks, .. } = &entry.data else {
            return Err(StoreError::NotAFile(
                String::from_utf8_lossy(&entry.name).into(),
            ));
        };
        let FileReader {
            chunks: mut list,
            mut starts,
            reader,
            ..
        } = spent;
        list.clear();
        list.extend_from_slice(chunks);
        starts.clear();
        let mut size = 0u64;
        for c in chunks {
            starts.push(size);
            size += u64::from(c.len);
        }
        Ok(FileReader {
            chunks: list,
            starts,
            size,
            pos: 0,
            reader,
            loaded: 0,
        })
    }

    /// Opens a reader over a regular file entry.
    pub fn open_file(&self, entry: &TreeEntry) -> Result<FileReader> {
        match &entry.data {
            EntryData::File { chunks, .. } => Ok(self.open_chunks(chunks)),
            _ => Err(StoreError::NotAFile(
                String::from_utf8_lossy(&entry.name).into(),
            )),
        }
    }
}
