//! Frames written to the newest segment with `O_DIRECT`, past the page cache.
//!
//! An `fdatasync` after writing over blocks the file already has needs no
//! file size or block map written, only the device's cache flushed: on this
//! project's ext4 disk a direct 4 KiB write and flush took 0.17-0.23 ms and
//! 53-70 µs of kernel time, against 0.48-0.56 ms and 180-200 µs for a 4 KiB
//! append through the page cache (BENCHMARKS.md, "Session 7").
//! Written through the page cache, the same overwrite can cost far more: a
//! file read with readahead is cached in large folios, and a frame of 800
//! bytes then dirties and writes a whole folio of up to 1 MiB. Direct writes
//! go to the device as they are.
//!
//! They must be whole, aligned blocks. So each write begins at the block
//! that holds the end of the last frame: the bytes of that block already
//! written (kept here, as `tail`), then the new frame, then zeros to the
//! block's end. The bytes rewritten are the same as before, so a write cut
//! off by a crash leaves them as they were on every sector of the block.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What a direct write is aligned to: the block size of the file systems
/// this runs on, and a multiple of any disk's sector.
pub(super) const BLOCK: usize = 4096;

pub(super) struct Direct {
    file: File,
    /// The segment's bytes from the last block boundary to the end of the
    /// last frame.
    tail: Vec<u8>,
    /// Room for a write, allocated once with a block to spare for aligning.
    buf: Vec<u8>,
}

impl Direct {
    /// Opens `path` for direct writes after its frames, which end at `end`
    /// (`file` is the same segment, opened for reading). None where the
    /// system or the file system does not have them.
    pub fn open(path: &Path, file: &File, end: u64) -> Option<Direct> {
        let direct = open_direct(path)?;
        let start = end - end % BLOCK as u64;
        let mut tail = vec![0; (end - start) as usize];
        file.read_exact_at(&mut tail, start).ok()?;
        Some(Direct { file: direct, tail, buf: Vec::new() })
    }

    /// Writes `frame` at `end`, the end of the last frame, with the block
    /// it begins in and zeros to the next block boundary.
    pub fn write(&mut self, frame: &[u8], end: u64) -> std::io::Result<()> {
        let start = end - self.tail.len() as u64;
        debug_assert_eq!(start % BLOCK as u64, 0, "the tail begins at a block");
        let used = self.tail.len() + frame.len();
        let len = used.div_ceil(BLOCK) * BLOCK;
        if self.buf.len() < len + BLOCK {
            self.buf = vec![0; (len + BLOCK).next_power_of_two()];
        }
        let out = aligned(&mut self.buf, len);
        out[..self.tail.len()].copy_from_slice(&self.tail);
        out[self.tail.len()..used].copy_from_slice(frame);
        out[used..].fill(0);
        self.file.write_all_at(out, start)?;
        let last = used - used % BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&out[last..used]);
        Ok(())
    }
}

/// `len` bytes of `buf` from its first block-aligned address (`buf` has a
/// block to spare): what a direct write takes.
fn aligned(buf: &mut [u8], len: usize) -> &mut [u8] {
    let skew = buf.as_ptr().align_offset(BLOCK);
    &mut buf[skew..skew + len]
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    std::fs::OpenOptions::new().write(true).custom_flags(flags).open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

/// Whether a failed direct write says the file system takes no direct writes
/// of this alignment: the log then writes through the page cache.
pub(super) fn unsupported(e: &std::io::Error) -> bool {
    rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::INVAL)
}

/// Writes `len` bytes of zeros to `file` in writes of up to 1 MiB, directly
/// if it can: a spare segment, every block of it allocated and written.
pub(super) fn zeros(path: &Path, file: &File, len: u64) -> std::io::Result<()> {
    let chunk = 1024 * 1024;
    let mut buf = vec![0u8; chunk + BLOCK];
    let zeros = aligned(&mut buf, chunk);
    let direct = open_direct(path);
    let mut at = 0;
    while at < len {
        let n = chunk.min((len - at).div_ceil(BLOCK as u64) as usize * BLOCK);
        match direct.as_ref().map(|direct| direct.write_all_at(&zeros[..n], at)) {
            Some(Ok(())) => {}
            Some(Err(e)) if !unsupported(&e) => return Err(e),
            _ => file.write_all_at(&zeros[..n], at)?,
        }
        at += n as u64;
    }
    file.sync_data()
}
