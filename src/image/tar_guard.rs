//! Bounds tar extension records (GNU long name `L` and long link `K`, PAX `x` and `g`)
//! before the tar crate reads them: tar 0.4 reads such a record whole into memory, so a
//! 1 GiB long name in a 1 MB gzip layer made the daemon allocate 3.6 GiB. (Its raw mode
//! would hand the records to us, but then long names, PAX paths and sizes and sparse
//! files would all have to be re-implemented; following the stream is less code.)
//!
//! [`TarGuard`] sits between the bytes and `tar::Archive` and follows the archive the way
//! tar 0.4's entry iterator does: a 512-byte header, the GNU sparse extension blocks, the
//! data padded to 512 bytes, a PAX `size` overriding the size of the next real entry, an
//! all-zero block ending the archive. It fails the read that completes the header of an
//! oversized record, so none of its data is ever buffered.

use std::io::{self, Read, Seek, SeekFrom};

use tar::{EntryType, Header};

/// Largest extension record accepted; real ones are a path or a few xattrs.
pub const MAX_EXTENSION: u64 = 64 << 10;
const BLOCK: usize = 512;

/// The error a guarded read fails with (inside an `io::Error`; see [`oversized`]).
#[derive(Debug, thiserror::Error)]
#[error("a tar {kind} record of {size} bytes exceeds the limit of {MAX_EXTENSION} bytes")]
pub struct Oversized {
    pub kind: &'static str,
    pub size: u64,
}

/// The [`Oversized`] behind an error of a guarded reader, if that is what it was.
pub(crate) fn oversized(e: &io::Error) -> Option<&Oversized> {
    e.get_ref()?.downcast_ref::<Oversized>()
}

enum State {
    /// Collecting a header block.
    Header,
    /// Collecting a GNU sparse extension block; `size` bytes of data follow the last one.
    SparseExt { size: u64 },
    /// Inside an entry's data (`left` bytes) and its padding (`pad`), then a header.
    /// `capture`: a PAX `x` record, kept for its `size`.
    Data { left: u64, pad: u64, capture: bool },
    /// After the end-of-archive block, or a header the tar crate refuses too.
    Done,
}

pub(crate) struct TarGuard<R> {
    inner: R,
    state: State,
    block: [u8; BLOCK],
    filled: usize,
    /// The data of the PAX `x` record being read (at most [`MAX_EXTENSION`] bytes).
    pax: Vec<u8>,
    /// The PAX `size` that applies to the next real entry.
    pax_size: Option<u64>,
}

impl<R> TarGuard<R> {
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            state: State::Header,
            block: [0; BLOCK],
            filled: 0,
            pax: Vec::new(),
            pax_size: None,
        }
    }

    /// Follows the next `n` bytes of the archive: `bytes` when read, `None` when skipped
    /// by a seek (which the tar crate only does over data it does not read).
    fn follow(&mut self, mut bytes: Option<&[u8]>, mut n: u64) -> io::Result<()> {
        while n > 0 {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Data { left, pad, capture } => {
                    let take = n.min(*left + *pad);
                    let data = take.min(*left);
                    if *capture {
                        let b =
                            bytes.ok_or_else(|| io::Error::other("a PAX record was skipped"))?;
                        self.pax.extend_from_slice(&b[..data as usize]);
                    }
                    *left -= data;
                    *pad -= take - data;
                    if *left == 0 && *pad == 0 {
                        if *capture {
                            self.pax_size = pax_size(&self.pax);
                            self.pax.clear();
                        }
                        self.state = State::Header;
                    }
                    bytes = bytes.map(|b| &b[take as usize..]);
                    n -= take;
                }
                State::Header | State::SparseExt { .. } => {
                    let b = bytes.ok_or_else(|| io::Error::other("a tar header was skipped"))?;
                    let take = (BLOCK - self.filled).min(n as usize);
                    self.block[self.filled..self.filled + take].copy_from_slice(&b[..take]);
                    self.filled += take;
                    bytes = Some(&b[take..]);
                    n -= take as u64;
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.block_done()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn block_done(&mut self) -> io::Result<()> {
        match self.state {
            State::SparseExt { size } => {
                // Byte 504 of an extension block: whether another one follows.
                if self.block[504] == 0 {
                    self.state = data(size, false);
                }
                Ok(())
            }
            _ => self.header(),
        }
    }

    /// A complete header block: refuse an oversized record, work out what follows.
    fn header(&mut self) -> io::Result<()> {
        if self.block.iter().all(|b| *b == 0) {
            self.state = State::Done;
            return Ok(());
        }
        let h = Header::from_byte_slice(&self.block);
        let kind = h.entry_type();
        let Ok(size) = h.entry_size() else {
            self.state = State::Done;
            return Ok(());
        };
        let extension = match kind {
            EntryType::GNULongName => Some("GNU long name"),
            EntryType::GNULongLink => Some("GNU long link"),
            EntryType::XHeader => Some("PAX extended header"),
            EntryType::XGlobalHeader => Some("PAX global header"),
            _ => None,
        };
        if let Some(kind) = extension {
            if size > MAX_EXTENSION {
                return Err(io::Error::other(Oversized { kind, size }));
            }
        }
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        // The tar crate collects recognized L, K and x records for the next entry; any
        // other header is an entry of its own and consumes a pending PAX size.
        let collected = recognized && extension.is_some() && kind != EntryType::XGlobalHeader;
        let size = match extension {
            Some(_) => size,
            None => self.pax_size.unwrap_or(size),
        };
        if !collected {
            self.pax_size = None;
        }
        let sparse_ext = extension.is_none()
            && kind == EntryType::GNUSparse
            && h.as_gnu().is_some_and(|g| g.is_extended());
        self.state = if sparse_ext {
            State::SparseExt { size }
        } else {
            data(size, collected && kind == EntryType::XHeader)
        };
        Ok(())
    }
}

fn data(size: u64, capture: bool) -> State {
    let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
    State::Data {
        left: size,
        pad,
        capture,
    }
}

/// The `size` key of a PAX record, as tar 0.4 reads it (`None` at the first bad record).
fn pax_size(record: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(record) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.follow(Some(&buf[..n]), n as u64)?;
        Ok(n)
    }
}

/// The index pass seeks over member data; only relative forward seeks are followed.
impl<R: Seek> Seek for TarGuard<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Current(delta @ 0..) = pos else {
            return Err(io::Error::other("a guarded tar stream only seeks forward"));
        };
        let at = self.inner.seek(pos)?;
        self.follow(None, delta as u64)?;
        Ok(at)
    }
}
