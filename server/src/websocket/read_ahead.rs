//! Reads ahead of tungstenite, so that a small per-connection read buffer
//! costs neither extra reads nor idle memory.
//!
//! tungstenite reads at most its read-buffer size per call and keeps that
//! buffer for the life of the connection. A small one keeps idle
//! connections small but takes a read syscall per few hundred bytes of a
//! large message; a large one is the reverse, for every idle device. This
//! adapter reads as much as the socket has into one scratch buffer per
//! thread and hands it to tungstenite from memory. What tungstenite did not
//! take yet waits in a per-connection buffer that exists only while it
//! holds bytes, so an idle connection carries nothing here.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes from the socket: a burst of a few large
/// messages (four 4 KiB SDPs) in one syscall.
pub(crate) const SCRATCH_BYTES: usize = 32 * 1024;

thread_local! {
    // Only borrowed inside one `poll_read`, which never reaches another
    // `ReadAhead` on the same thread, so the borrow cannot be contended.
    static SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// A stream whose reads go through the per-thread scratch buffer.
#[derive(Debug)]
pub(crate) struct ReadAhead<T> {
    inner: T,
    /// Bytes read from the socket that the reader has not taken yet,
    /// from `taken` on. Empty, and unallocated, most of the time.
    pending: Vec<u8>,
    taken: usize,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            taken: 0,
        }
    }

    /// Copies as much of `pending` into `buf` as fits; frees it once
    /// drained.
    fn take_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let n = (self.pending.len() - self.taken).min(buf.remaining());
        buf.put_slice(&self.pending[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == self.pending.len() {
            self.pending = Vec::new();
            self.taken = 0;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.taken < this.pending.len() {
            this.take_pending(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SCRATCH_BYTES {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut ahead = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
            let read = ahead.filled();
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read[..n]);
            this.pending.extend_from_slice(&read[n..]);
            Poll::Ready(Ok(()))
        })
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whatever the reader's buffer size, it gets every byte in order, and
    /// nothing stays allocated once it has taken them all.
    #[tokio::test]
    async fn small_reads_get_every_byte_in_order() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 512, 4096, SCRATCH_BYTES, 2 * SCRATCH_BYTES] {
            let (mut writer, reader) = tokio::io::duplex(64 * 1024);
            let sent = data.clone();
            let writing = tokio::spawn(async move {
                writer.write_all(&sent).await.unwrap();
            });
            let mut reader = ReadAhead::new(reader);
            let mut got = Vec::new();
            let mut buf = vec![0; chunk];
            loop {
                let n = reader.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                assert!(n <= chunk);
                got.extend_from_slice(&buf[..n]);
            }
            writing.await.unwrap();
            assert_eq!(got, data, "reads of {chunk} bytes");
            assert_eq!(reader.pending.capacity(), 0, "reads of {chunk} bytes");
        }
    }

    /// A burst larger than the reader asked for is read with one read of
    /// the socket; the rest is served from memory.
    #[tokio::test]
    async fn a_burst_is_one_socket_read() {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        writer.write_all(&[1; 3000]).await.unwrap();
        let mut reader = ReadAhead::new(reader);
        let mut buf = [0; 512];
        assert_eq!(reader.read(&mut buf).await.unwrap(), 512);
        assert_eq!(reader.pending.len() - reader.taken, 3000 - 512);
        drop(writer);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 3000 - 512);
    }
}
