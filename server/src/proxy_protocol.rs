//! The PROXY protocol (HAProxy's, versions 1 and 2; PROTOCOL.md, "Behind
//! a proxy"): with `--proxy-protocol`, a load balancer that passes TCP
//! through (HAProxy, AWS NLB) opens each connection with a header naming
//! the client's address, before any byte of TLS or HTTP.
//!
//! [`parse`] decides on bytes alone; [`read`] reads a connection's header
//! with it and hands back the connection with whatever came after the
//! header still to be read ([`Rewind`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};

/// The 12 bytes every version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, `\r\n` included (the specification's
/// bound).
pub const V1_MAX: usize = 107;

/// The longest version 2 header taken: the fixed 16 bytes and an address
/// block with TLVs of up to 4080 bytes (load balancers add a few dozen
/// bytes of TLVs; the format allows 64 KiB).
pub const V2_MAX: usize = 4096;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address.
    Client(SocketAddr),
    /// The proxy speaks for itself (a health check: v2 `LOCAL`, v1
    /// `UNKNOWN`), or names an address family with no IP (unix): the
    /// connection's own address stands.
    Unnamed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header: the connection starts with something else")]
    Missing,
    #[error("a PROXY protocol v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("a malformed PROXY protocol v1 header: {0}")]
    V1(&'static str),
    #[error("a PROXY protocol v2 header of version {0}, not 2")]
    V2Version(u8),
    #[error("a PROXY protocol v2 header with the command {0}, neither LOCAL nor PROXY")]
    V2Command(u8),
    #[error("a PROXY protocol v2 header for {0}, not a TCP stream")]
    V2Transport(&'static str),
    #[error("a PROXY protocol v2 header of {0} bytes, over the {V2_MAX} taken")]
    V2TooLong(usize),
    #[error("a PROXY protocol v2 address block of {got} bytes, {want} needed for its family")]
    V2Short { got: usize, want: usize },
    #[error("the connection ended inside its PROXY protocol header")]
    Truncated,
    #[error("the PROXY protocol header did not arrive in time")]
    Timeout,
    #[error("reading the PROXY protocol header: {0}")]
    Io(String),
}

/// The header at the start of `bytes`, and its length; `Ok(None)` when
/// more bytes are needed to tell.
pub fn parse(bytes: &[u8]) -> Result<Option<(Source, usize)>, HeaderError> {
    let v1 = b"PROXY ";
    let common = bytes.len().min(v1.len());
    if bytes[..common] == v1[..common] {
        return if bytes.len() < v1.len() {
            Ok(None)
        } else {
            parse_v1(bytes)
        };
    }
    let common = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..common] == V2_SIGNATURE[..common] {
        return parse_v2(bytes);
    }
    Err(HeaderError::Missing)
}

fn parse_v1(bytes: &[u8]) -> Result<Option<(Source, usize)>, HeaderError> {
    let Some(end) = bytes.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(HeaderError::V1TooLong)
        } else if bytes[..bytes.len().min(V1_MAX)].contains(&b'\n') {
            Err(HeaderError::V1("a line feed without a carriage return"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| HeaderError::V1("not ASCII"))?;
    let mut fields = line.split(' ');
    let _proxy = fields.next();
    let family = fields.next().ok_or(HeaderError::V1("no protocol"))?;
    let consumed = end + 2;
    if family == "UNKNOWN" {
        // What follows is to be ignored (the specification's words).
        return Ok(Some((Source::Unnamed, consumed)));
    }
    let parts: Vec<&str> = fields.collect();
    let [source, _destination, source_port, destination_port] = parts[..] else {
        return Err(HeaderError::V1(
            "not four fields after the protocol, each after one space",
        ));
    };
    let ip: IpAddr = match family {
        "TCP4" => source
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| HeaderError::V1("a TCP4 source that is not an IPv4 address"))?,
        "TCP6" => source
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| HeaderError::V1("a TCP6 source that is not an IPv6 address"))?,
        _ => return Err(HeaderError::V1("a protocol other than TCP4, TCP6, UNKNOWN")),
    };
    let port = v1_port(source_port)?;
    v1_port(destination_port)?;
    Ok(Some((Source::Client(SocketAddr::new(ip, port)), consumed)))
}

/// A port of a v1 header: decimal digits, no sign, no leading zero.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let digits = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    digits
        .then(|| text.parse::<u16>().ok())
        .flatten()
        .ok_or(HeaderError::V1(
            "a port that is not a number from 0 to 65535",
        ))
}

fn parse_v2(bytes: &[u8]) -> Result<Option<(Source, usize)>, HeaderError> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    let version = bytes[12] >> 4;
    if version != 2 {
        return Err(HeaderError::V2Version(version));
    }
    let command = bytes[12] & 0x0f;
    if command > 1 {
        return Err(HeaderError::V2Command(command));
    }
    let (family, transport) = (bytes[13] >> 4, bytes[13] & 0x0f);
    let length = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let total = 16 + length;
    if total > V2_MAX {
        return Err(HeaderError::V2TooLong(total));
    }
    if bytes.len() < total {
        return Ok(None);
    }
    // LOCAL: the proxy's own connection (a health check); the addresses,
    // if any, are to be ignored.
    if command == 0 {
        return Ok(Some((Source::Unnamed, total)));
    }
    match transport {
        // UNSPEC goes with the UNSPEC family, below.
        0 | 1 => {}
        2 => return Err(HeaderError::V2Transport("datagrams")),
        _ => return Err(HeaderError::V2Transport("an unknown transport")),
    }
    let block = &bytes[16..total];
    let need = |want: usize| {
        if block.len() < want {
            Err(HeaderError::V2Short {
                got: block.len(),
                want,
            })
        } else {
            Ok(())
        }
    };
    let source = match family {
        // UNSPEC: the receiver "must" use the real connection's address.
        0 => Source::Unnamed,
        1 => {
            need(12)?;
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let port = u16::from_be_bytes([block[8], block[9]]);
            Source::Client(SocketAddr::new(IpAddr::V4(ip), port))
        }
        2 => {
            need(36)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            let port = u16::from_be_bytes([block[32], block[33]]);
            Source::Client(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        3 => {
            need(216)?;
            Source::Unnamed
        }
        _ => return Err(HeaderError::V2Transport("an unknown address family")),
    };
    if transport == 0 && family != 0 {
        return Err(HeaderError::V2Transport("an unspecified transport"));
    }
    Ok(Some((source, total)))
}

/// Reads the header at the start of `stream`; the stream comes back with
/// the bytes read past the header still to be read.
pub async fn read<S>(mut stream: S) -> Result<(Source, Rewind<S>), HeaderError>
where
    S: AsyncRead + Unpin,
{
    let mut buffer = Vec::with_capacity(256);
    loop {
        match parse(&buffer)? {
            Some((source, length)) => {
                let rest = buffer.split_off(length);
                return Ok((source, Rewind::new(rest, stream)));
            }
            None => {
                // Never past the longest header plus one read.
                let mut chunk = [0u8; 512];
                let n = stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| HeaderError::Io(e.to_string()))?;
                if n == 0 {
                    return Err(HeaderError::Truncated);
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub struct Rewind<S> {
    /// What was read past the header: given out first.
    ahead: Vec<u8>,
    given: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, with `ahead` (bytes already read from it) read first.
    pub fn new(ahead: Vec<u8>, inner: S) -> Self {
        Self {
            ahead,
            given: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.given < this.ahead.len() {
            let n = buf.remaining().min(this.ahead.len() - this.given);
            buf.put_slice(&this.ahead[this.given..this.given + n]);
            this.given += n;
            if this.given == this.ahead.len() {
                // Its allocation is not kept for the connection's life.
                this.ahead = Vec::new();
                this.given = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(text: &str) -> Source {
        Source::Client(text.parse().unwrap())
    }

    fn v2(command: u8, family_transport: u8, block: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family_transport);
        bytes.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(block);
        bytes
    }

    #[test]
    fn version_1_headers_name_the_client() {
        let line = b"PROXY TCP4 203.0.113.9 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(parse(line), Ok(Some((client("203.0.113.9:56324"), 43))));
        let line = b"PROXY TCP6 2001:db8::1 ::1 4711 443\r\n";
        assert_eq!(
            parse(line),
            Ok(Some((client("[2001:db8::1]:4711"), line.len())))
        );
        let line = b"PROXY UNKNOWN whatever follows\r\n";
        assert_eq!(parse(line), Ok(Some((Source::Unnamed, line.len()))));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((Source::Unnamed, 15))));
    }

    #[test]
    fn a_header_in_pieces_needs_more() {
        let line = b"PROXY TCP4 203.0.113.9 10.0.0.1 56324 443\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut]), Ok(None), "{cut}");
        }
        let header = v2(1, 0x11, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187]);
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Ok(None), "{cut}");
        }
    }

    #[test]
    fn malformed_version_1_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.9 10.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 203.0.113.9 ::1 1 2\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 +80 443\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 080 443\r\n",
            b"PROXY TCP4  203.0.113.9 10.0.0.1 80 443\r\n",
            b"PROXY UDP4 203.0.113.9 10.0.0.1 80 443\r\n",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 80 443\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeaderError::V1(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(HeaderError::V1TooLong));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(HeaderError::Missing));
        assert_eq!(parse(b"PROXZ"), Err(HeaderError::Missing));
    }

    #[test]
    fn version_2_headers_name_the_client_and_skip_their_tlvs() {
        let mut block = vec![203, 0, 113, 9, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb];
        // An AWS-style TLV after the addresses.
        block.extend_from_slice(&[0xea, 0x00, 0x04, 0x01, b'v', b'p', b'c']);
        let header = v2(1, 0x11, &block);
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&bytes),
            Ok(Some((client("203.0.113.9:56324"), header.len())))
        );
        let mut block = vec![0u8; 36];
        block[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block[32..34].copy_from_slice(&4711u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &block)),
            Ok(Some((client("[2001:db8::7]:4711"), 52)))
        );
        // LOCAL (a health check) and UNSPEC: the connection's own address.
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Some((Source::Unnamed, 16))));
        assert_eq!(parse(&v2(1, 0x00, &[])), Ok(Some((Source::Unnamed, 16))));
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216])),
            Ok(Some((Source::Unnamed, 232)))
        );
    }

    #[test]
    fn malformed_version_2_headers_are_refused() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert_eq!(parse(&wrong_version), Err(HeaderError::V2Version(1)));
        assert_eq!(
            parse(&v2(2, 0x11, &[0; 12])),
            Err(HeaderError::V2Command(2))
        );
        assert_eq!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(HeaderError::V2Transport("datagrams"))
        );
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 8])),
            Err(HeaderError::V2Short { got: 8, want: 12 })
        );
        assert_eq!(
            parse(&v2(1, 0x21, &[0; 12])),
            Err(HeaderError::V2Short { got: 12, want: 36 })
        );
        assert_eq!(
            parse(&v2(1, 0x41, &[0; 12])),
            Err(HeaderError::V2Transport("an unknown address family"))
        );
        assert_eq!(
            parse(&v2(1, 0x10, &[0; 12])),
            Err(HeaderError::V2Transport("an unspecified transport"))
        );
        // A length past the bound is refused before its bytes arrive.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(HeaderError::V2TooLong(16 + 65535)));
    }

    #[tokio::test]
    async fn what_follows_the_header_is_read_after_it() {
        use tokio::io::AsyncWriteExt as _;
        let (mut near, far) = tokio::io::duplex(1024);
        near.write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 5 443\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        drop(near);
        let (source, mut rest) = read(far).await.unwrap();
        assert_eq!(source, client("203.0.113.9:5"));
        let mut after = String::new();
        rest.read_to_string(&mut after).await.unwrap();
        assert_eq!(after, "GET / HTTP/1.1\r\n");
        let (mut near, far) = tokio::io::duplex(1024);
        near.write_all(b"PROXY TCP4 203.0.113.9").await.unwrap();
        drop(near);
        assert_eq!(read(far).await.unwrap_err(), HeaderError::Truncated);
    }
}
