//! Many packets per system call on a `SOCK_SEQPACKET` socket.
//!
//! A websocket's reader takes every frame waiting in one `read`, and its
//! writer sends a burst in one `write`; a packet socket with plain `recv`
//! and `send` pays a system call per message, plus the one that finds the
//! socket empty. Here up to [`PACKETS_PER_CALL`] packets are received with
//! one `recvmmsg` and a burst is sent with one `sendmmsg`; each packet is
//! still its own message to the other side. The server's device socket
//! and the load generator's socket devices use it.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, RawFd};

use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg, sendmmsg};
use tokio::io::unix::AsyncFdReadyGuard;
use tokio_seqpacket::UnixSeqpacket;

/// The most packets one system call moves. A device's burst rarely holds
/// more (a client's trickled candidates, a few relayed messages); more
/// would only grow the receive buffer, which is this many times the size
/// limit per worker thread.
pub const PACKETS_PER_CALL: usize = 8;

/// One packet received, or what stands in its place.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Text(&'a str),
    /// Over the size limit: the kernel cut it, the rest of it is gone.
    TooBig,
    NotUtf8,
    /// The peer closed its end (an empty packet reads the same; no device
    /// sends one).
    End,
}

thread_local! {
    /// Where packets are received: one slot of the size limit per packet
    /// of a call, per worker thread, so an idle device holds no read
    /// buffer at all. Allocated zeroed, so a page is only touched when a
    /// packet that large arrives.
    static RECEIVE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static RECEIVE_HEADERS: RefCell<Option<MultiHeaders<()>>> = const { RefCell::new(None) };
    static SEND_HEADERS: RefCell<Option<MultiHeaders<()>>> = const { RefCell::new(None) };
}

/// Receives the packets waiting on `socket` (up to [`PACKETS_PER_CALL`]
/// of at most `limit` bytes each, without waiting) and hands each, in order, to `each`, until it says to
/// stop; what follows a stop is dropped. `Err` of kind `WouldBlock` when
/// nothing is waiting. Returns how many packets were received: fewer than
/// [`PACKETS_PER_CALL`] means the socket was empty when the call returned.
pub fn receive_waiting(
    fd: RawFd,
    limit: usize,
    mut each: impl FnMut(Packet<'_>) -> ControlFlow<()>,
) -> io::Result<usize> {
    RECEIVE_BUFFER.with_borrow_mut(|buffer| {
        let size = limit * PACKETS_PER_CALL;
        if buffer.len() < size {
            *buffer = vec![0; size];
        }
        let mut lengths = [(0usize, false); PACKETS_PER_CALL];
        let received = RECEIVE_HEADERS.with_borrow_mut(|headers| {
            let headers =
                headers.get_or_insert_with(|| MultiHeaders::preallocate(PACKETS_PER_CALL, None));
            let mut slots: Vec<[IoSliceMut<'_>; 1]> = buffer[..size]
                .chunks_exact_mut(limit)
                .map(|slot| [IoSliceMut::new(slot)])
                .collect();
            let results = recvmmsg(
                fd,
                headers,
                slots.iter_mut(),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                None,
            )?;
            let mut received = 0;
            for (length, result) in lengths.iter_mut().zip(results) {
                *length = (result.bytes, result.flags.contains(MsgFlags::MSG_TRUNC));
                received += 1;
            }
            Ok::<_, nix::Error>(received)
        })?;
        for (slot, &(bytes, truncated)) in buffer.chunks_exact(limit).zip(&lengths[..received]) {
            let packet = if truncated {
                Packet::TooBig
            } else if bytes == 0 {
                Packet::End
            } else {
                std::str::from_utf8(&slot[..bytes]).map_or(Packet::NotUtf8, Packet::Text)
            };
            let end = packet == Packet::End;
            if each(packet).is_break() || end {
                break;
            }
        }
        Ok(received)
    })
}

/// Once `ready` (the socket's `as_async_fd().readable()`) has come:
/// receives what is waiting, as [`receive_waiting`] does, and keeps tokio's
/// readiness true to the socket. It is cleared when the socket was found
/// empty, by the call that found it so or by one that took fewer packets
/// than it could (a packet arriving since is a new edge for tokio, as a
/// short read is for tokio's own sockets). Nothing waiting is `Ok`.
pub fn receive_ready<T: AsRawFd>(
    ready: &mut AsyncFdReadyGuard<'_, T>,
    limit: usize,
    each: impl FnMut(Packet<'_>) -> ControlFlow<()>,
) -> io::Result<()> {
    match ready.try_io(|fd| receive_waiting(fd.as_raw_fd(), limit, each)) {
        Ok(Ok(count)) => {
            if count < PACKETS_PER_CALL {
                ready.clear_ready();
            }
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_would_block) => Ok(()),
    }
}

/// Sends `packets` in order, each whole, as few system calls as the
/// socket's buffer allows, waiting while it is full.
pub async fn send_all(socket: &UnixSeqpacket, packets: &[String]) -> io::Result<()> {
    let mut sent = 0;
    while sent < packets.len() {
        let mut ready = socket.as_async_fd().writable().await?;
        let chunk = &packets[sent..packets.len().min(sent + PACKETS_PER_CALL)];
        match ready.try_io(|fd| send_now(fd.as_raw_fd(), chunk)) {
            Ok(result) => sent += result?,
            // Full: tokio has cleared the readiness; wait for room.
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// One `sendmmsg` of up to [`PACKETS_PER_CALL`] packets without waiting:
/// how many went, or `WouldBlock` if none could.
fn send_now(fd: RawFd, packets: &[String]) -> io::Result<usize> {
    SEND_HEADERS.with_borrow_mut(|headers| {
        let headers =
            headers.get_or_insert_with(|| MultiHeaders::preallocate(PACKETS_PER_CALL, None));
        let slices: Vec<[IoSlice<'_>; 1]> = packets
            .iter()
            .map(|packet| [IoSlice::new(packet.as_bytes())])
            .collect();
        let addresses = [None::<()>; PACKETS_PER_CALL];
        let results = sendmmsg(
            fd,
            headers,
            slices.iter(),
            &addresses[..packets.len()],
            [],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_EOR,
        )?;
        Ok(results.count())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixSeqpacket, limit: usize) -> io::Result<Vec<String>> {
        let mut packets = Vec::new();
        receive_waiting(socket.as_raw_fd(), limit, |packet| {
            packets.push(format!("{packet:?}"));
            ControlFlow::Continue(())
        })?;
        Ok(packets)
    }

    #[tokio::test]
    async fn a_burst_arrives_in_order_in_one_call_and_the_rest_in_the_next() {
        let (ours, theirs) = UnixSeqpacket::pair().unwrap();
        let sent: Vec<String> = (0..PACKETS_PER_CALL + 3).map(|n| format!("m{n}")).collect();
        for packet in &sent {
            theirs.send(packet.as_bytes()).await.unwrap();
        }
        let first = received(&ours, 16).unwrap();
        assert_eq!(first.len(), PACKETS_PER_CALL);
        assert_eq!(first[0], r#"Text("m0")"#);
        let rest = received(&ours, 16).unwrap();
        assert_eq!(rest, [r#"Text("m8")"#, r#"Text("m9")"#, r#"Text("m10")"#]);
        let empty = received(&ours, 16).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn oversize_non_utf8_and_the_end_are_told_apart() {
        let (ours, theirs) = UnixSeqpacket::pair().unwrap();
        theirs.send(b"0123456789").await.unwrap();
        theirs.send(&[0xff, 0xfe]).await.unwrap();
        theirs.send(b"fits").await.unwrap();
        drop(theirs);
        let packets = received(&ours, 8).unwrap();
        assert_eq!(packets, ["TooBig", "NotUtf8", r#"Text("fits")"#, "End"]);
    }

    #[tokio::test]
    async fn a_stop_drops_what_follows_in_the_call() {
        let (ours, theirs) = UnixSeqpacket::pair().unwrap();
        for packet in ["a", "b", "c"] {
            theirs.send(packet.as_bytes()).await.unwrap();
        }
        let mut seen = Vec::new();
        let count = receive_waiting(ours.as_raw_fd(), 8, |packet| {
            seen.push(format!("{packet:?}"));
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(count, 3);
        assert_eq!(seen, [r#"Text("a")"#]);
    }

    #[tokio::test]
    async fn send_all_waits_for_room_and_keeps_every_packet_whole_and_in_order() {
        let (ours, theirs) = UnixSeqpacket::pair().unwrap();
        // Far more than the socket's buffer holds, so sending must wait
        // for the reader.
        let packets: Vec<String> = (0..2_000).map(|n| format!("{n:0>1000}")).collect();
        let expected = packets.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0; 2048];
            let mut got = Vec::new();
            while got.len() < expected.len() {
                let n = theirs.recv(&mut buffer).await.unwrap().bytes_read();
                got.push(String::from_utf8(buffer[..n].to_vec()).unwrap());
            }
            assert_eq!(got, expected);
        });
        send_all(&ours, &packets).await.unwrap();
        reader.await.unwrap();
    }
}
