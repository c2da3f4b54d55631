//! Redis's wire protocol (RESP2) on a connection the adapter drives itself.
//!
//! Each of the adapter's two connections has one user, the adapter's task,
//! and every exchange on the command connection is one pipeline written and
//! its answers read in order; the subscription only reads. So neither needs
//! a driver task: redis-rs's multiplexed connection and pub/sub stream put
//! a hand-off between tasks (a channel send and a wake) on each way of
//! every batch. Without them the two instances spend 6–7% less CPU per
//! message between them (BENCHMARKS.md, "Many instances"). redis-rs still
//! parses the `--redis` URL and packs commands; this reads the answers, in
//! place: a published batch is decoded where it landed in the read buffer,
//! never copied.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// Why an exchange with Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("redis closed the connection")]
    Closed,
    #[error("not RESP: {0}")]
    Protocol(&'static str),
    /// An error reply (`-ERR …`).
    #[error("redis answered: {0}")]
    Server(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("an unexpected answer: {0}")]
    Unexpected(String),
}

/// One value, borrowed from the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(&'a [u8]),
    Nil,
    Array(Vec<Value<'a>>),
}

impl Value<'_> {
    /// As redis-rs's value, for its typed conversions.
    fn to_redis(&self) -> Result<redis::Value, Error> {
        Ok(match self {
            Value::Simple(b"OK") => redis::Value::Okay,
            Value::Simple(text) => {
                redis::Value::SimpleString(String::from_utf8_lossy(text).into_owned())
            }
            Value::Error(text) => {
                return Err(Error::Server(String::from_utf8_lossy(text).into_owned()));
            }
            Value::Int(n) => redis::Value::Int(*n),
            Value::Bulk(bytes) => redis::Value::BulkString(bytes.to_vec()),
            Value::Nil => redis::Value::Nil,
            Value::Array(items) => redis::Value::Array(
                items
                    .iter()
                    .map(Value::to_redis)
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// Arrays nest no deeper than this in anything the adapter asks for.
const MAX_DEPTH: usize = 4;

/// The value at the start of `buf` and its length in bytes, or `None`
/// while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, Error> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value<'_>, usize)>, Error> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some(line_end) = find_crlf(buf, at + 1) else {
        return Ok(None);
    };
    let line = &buf[at + 1..line_end];
    let after = line_end + 2;
    Ok(Some(match kind {
        b'+' => (Value::Simple(line), after),
        b'-' => (Value::Error(line), after),
        b':' => (Value::Int(integer(line)?), after),
        b'$' => {
            let len = integer(line)?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let len = usize::try_from(len).map_err(|_| Error::Protocol("a bulk length"))?;
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(Error::Protocol("a bulk string without its CRLF"));
            }
            (Value::Bulk(&buf[after..end]), end + 2)
        }
        b'*' => {
            let count = integer(line)?;
            if count < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            if depth >= MAX_DEPTH {
                return Err(Error::Protocol("arrays nested too deep"));
            }
            let count = usize::try_from(count).map_err(|_| Error::Protocol("an array length"))?;
            // Each item takes at least 3 bytes; a count beyond that is
            // waiting for more input, not something to allocate for.
            let mut items = Vec::with_capacity(count.min((buf.len() - after) / 3 + 1));
            let mut next = after;
            for _ in 0..count {
                let Some((item, end)) = parse_at(buf, next, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                next = end;
            }
            (Value::Array(items), next)
        }
        _ => return Err(Error::Protocol("an unknown type byte")),
    }))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|i| from + i)
}

fn integer(line: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(Error::Protocol("an integer"))
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    use std::io::Write as _;
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The first read buffer; it grows to hold the largest value read.
const READ_BUFFER: usize = 64 << 10;

/// One connection to Redis.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// What is read and not consumed: `buf[start..end]`.
    start: usize,
    end: usize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &(self.end - self.start))
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects and authenticates as the URL says, and selects its
    /// database.
    pub async fn connect(info: &ConnectionInfo) -> Result<Self, Error> {
        let stream = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Stream::Tcp(stream)
            }
            ConnectionAddr::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            ConnectionAddr::TcpTls { .. } => {
                return Err(Error::Unsupported(
                    "TLS to Redis (rediss://) is not supported",
                ));
            }
            _ => return Err(Error::Unsupported("this kind of Redis address")),
        };
        let mut conn = Self {
            stream,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        };
        let settings = info.redis_settings();
        let mut hello = Vec::new();
        let mut answers = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            answers += 1;
        }
        if settings.db() != 0 {
            command(
                &mut hello,
                &[b"SELECT", settings.db().to_string().as_bytes()],
            );
            answers += 1;
        }
        if answers > 0 {
            conn.send(&hello).await?;
            for _ in 0..answers {
                conn.answer().await?;
            }
        }
        Ok(conn)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Waits until a whole value is buffered; its length. Cancel-safe:
    /// what was read stays buffered.
    pub async fn fill(&mut self) -> Result<usize, Error> {
        loop {
            if let Some((_, len)) = parse(&self.buf[self.start..self.end])? {
                return Ok(len);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            self.end += n;
        }
    }

    /// The value `fill` found; `len` is what it returned.
    pub fn peek(&self, len: usize) -> Value<'_> {
        match parse(&self.buf[self.start..self.start + len]) {
            Ok(Some((value, _))) => value,
            // `fill` parsed these very bytes.
            _ => unreachable!("a value that parsed once parses again"),
        }
    }

    /// Drops the value `fill` found; a buffer grown for a large one
    /// shrinks back once it is empty.
    pub fn consume(&mut self, len: usize) {
        self.start += len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_BUFFER {
                self.buf.truncate(READ_BUFFER);
                self.buf.shrink_to_fit();
            }
        }
    }

    /// The next answer, as redis-rs's value.
    pub async fn answer(&mut self) -> Result<redis::Value, Error> {
        let len = self.fill().await?;
        let value = self.peek(len).to_redis();
        self.consume(len);
        value
    }

    /// Sends one command and reads its answer as `T`.
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Error> {
        self.send(&cmd.get_packed_command()).await?;
        let answer = self.answer().await?;
        T::from_redis_value(answer).map_err(|e| Error::Unexpected(e.to_string()))
    }

    /// Sends a pipeline and reads its answers, every one, as `T` (from an
    /// array of them).
    pub async fn query_pipeline<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, Error> {
        self.send(&pipe.get_packed_pipeline()).await?;
        let answers = self.answers(pipe.len()).await?;
        T::from_redis_value(redis::Value::Array(answers))
            .map_err(|e| Error::Unexpected(e.to_string()))
    }

    /// Reads `count` answers; the first error answer fails them all, once
    /// all are read (so the connection stays in step).
    pub async fn answers(&mut self, count: usize) -> Result<Vec<redis::Value>, Error> {
        let mut answers = Vec::with_capacity(count);
        let mut failed = None;
        for _ in 0..count {
            match self.answer().await {
                Ok(value) => answers.push(value),
                Err(Error::Server(e)) => {
                    failed.get_or_insert(Error::Server(e));
                }
                Err(e) => return Err(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(answers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_says_how_long_it_was() {
        let cases: [(&[u8], Value<'_>); 7] = [
            (b"+OK\r\n", Value::Simple(b"OK")),
            (b"-ERR no\r\n", Value::Error(b"ERR no")),
            (b":-42\r\n", Value::Int(-42)),
            (b"$5\r\nhe\r\no\r\n", Value::Bulk(b"he\r\no")),
            (b"$-1\r\n", Value::Nil),
            (b"*-1\r\n", Value::Nil),
            (
                b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n",
                Value::Array(vec![
                    Value::Bulk(b"message"),
                    Value::Bulk(b"c"),
                    Value::Bulk(b""),
                ]),
            ),
        ];
        for (bytes, value) in cases {
            let mut followed = bytes.to_vec();
            followed.extend_from_slice(b":1\r\n");
            assert_eq!(
                parse(&followed).unwrap(),
                Some((value, bytes.len())),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn an_incomplete_value_waits_at_every_cut() {
        let whole: &[u8] = b"*2\r\n$7\r\npayload\r\n*1\r\n:7\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(whole).unwrap().is_some());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_wait() {
        for bytes in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2x\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn a_huge_declared_array_allocates_nothing_for_it() {
        assert_eq!(parse(b"*999999999999\r\n:1\r\n").unwrap(), None);
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n".to_vec()
        );
        let (value, len) = parse(&out).unwrap().unwrap();
        assert_eq!(len, out.len());
        assert_eq!(
            value,
            Value::Array(vec![
                Value::Bulk(b"PUBLISH"),
                Value::Bulk(b"ch"),
                Value::Bulk(b"a\r\nb")
            ])
        );
    }
}
