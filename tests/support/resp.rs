//! A tiny blocking RESP2 client, independent of the proxy's own codec so that it checks it. RESP3
//! pushes, maps and nulls read as arrays and nil, enough to follow a client that said HELLO 3.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

/// How long one read or write may block: a hang fails the test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One RESP2 reply.
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Status("OK".to_string())
    }

    /// A non-null bulk string.
    pub fn bulk(bytes: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(Some(bytes.as_ref().to_vec()))
    }

    /// The null bulk string (`$-1`).
    pub fn nil() -> Reply {
        Reply::Bulk(None)
    }

    /// Text of a status or of a UTF-8 bulk string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Reply::Status(s) => Some(s),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Bytes of a status or a bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Status(s) => Some(s.as_bytes()),
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    /// The message of an error reply, without the leading `-`.
    pub fn error(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// `+OK`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Status(s) if s == "OK")
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Status(s) => write!(f, "+{s}"),
            Reply::Error(e) => write!(f, "-{e}"),
            Reply::Int(n) => write!(f, ":{n}"),
            Reply::Bulk(None) => write!(f, "(nil)"),
            Reply::Bulk(Some(b)) if b.len() > 200 => {
                write!(f, "\"{}\"... ({} bytes)", b[..200].escape_ascii(), b.len())
            }
            Reply::Bulk(Some(b)) => write!(f, "\"{}\"", b.escape_ascii()),
            Reply::Array(None) => write!(f, "(nil array)"),
            Reply::Array(Some(items)) => f.debug_list().entries(items).finish(),
        }
    }
}

/// Encodes one command as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the start of `buf`: `Ok(None)` while it is incomplete, else the reply and the
/// number of bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..line_end]).map_err(|_| {
        format!(
            "reply line is not UTF-8: {:?}",
            buf[..line_end].escape_ascii().to_string()
        )
    })?;
    let after = line_end + 2;
    let number = || {
        line.parse::<i64>().map_err(|_| {
            format!(
                "bad number in reply line {:?}",
                buf[..line_end].escape_ascii().to_string()
            )
        })
    };
    match buf[0] {
        b'+' => Ok(Some((Reply::Status(line.to_string()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_string()), after))),
        b':' => Ok(Some((Reply::Int(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let end = after + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(format!("bulk string of {len} bytes not followed by CRLF"));
            }
            Ok(Some((Reply::Bulk(Some(buf[after..end].to_vec())), end + 2)))
        }
        // RESP3 nulls, pushes and maps (as a flat array of pairs), for clients that said HELLO 3.
        b'_' => Ok(Some((Reply::Bulk(None), after))),
        b'*' | b'>' | b'%' | b'~' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let len = if buf[0] == b'%' { len * 2 } else { len };
            let mut items = Vec::with_capacity(len.min(4096) as usize);
            let mut pos = after;
            for _ in 0..len {
                match parse(&buf[pos..])? {
                    Some((item, used)) => {
                        items.push(item);
                        pos += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), pos)))
        }
        other => Err(format!(
            "unexpected reply type byte {:?} in {:?}",
            other as char,
            buf[..line_end].escape_ascii().to_string()
        )),
    }
}

/// A blocking connection to the proxy or to a Redis node.
pub struct Client {
    stream: TcpStream,
    port: u16,
    /// Bytes read but not yet parsed; `start` is where the unparsed part begins.
    buf: Vec<u8>,
    start: usize,
}

impl Client {
    /// Connects to `127.0.0.1:port`, panicking with the port in the message if that fails.
    pub fn connect(port: u16) -> Client {
        Client::try_connect(port)
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{port}: {e}"))
    }

    pub fn try_connect(port: u16) -> io::Result<Client> {
        Client::try_connect_to(&format!("127.0.0.1:{port}"))
    }

    /// Connects to `ip:port` (any loopback address, as the "pods" of discovery tests use).
    pub fn try_connect_to(addr: &str) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        let port = stream.peer_addr()?.port();
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        // A peer that stops reading must not block a pipelined write forever either.
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            port,
            buf: Vec::new(),
            start: 0,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one command and reads its reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send(args);
        self.read_reply()
    }

    /// Sends one command and reads its reply, or says why the connection failed.
    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Reply> {
        self.stream.write_all(&encode(args))?;
        self.try_read_reply()
    }

    /// What `ROLE` says the server is ("master", "slave", "sentinel"); empty when it does not say.
    pub fn role(&mut self) -> String {
        let reply = self.cmd(&["ROLE"]);
        reply
            .as_array()
            .and_then(|a| a.first())
            .and_then(Reply::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// Sends one command without reading its reply.
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.send_raw(&encode(args));
    }

    /// Writes bytes as they are: for malformed input.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("write to 127.0.0.1:{} failed: {e}", self.port);
        }
    }

    /// Reads one reply; panics if the connection closes or nothing arrives within `IO_TIMEOUT`.
    pub fn read_reply(&mut self) -> Reply {
        match self.try_read_reply() {
            Ok(reply) => reply,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                panic!(
                    "127.0.0.1:{} closed the connection while a reply was awaited",
                    self.port
                )
            }
            Err(e) if is_timeout(&e) => {
                panic!(
                    "no reply from 127.0.0.1:{} within {IO_TIMEOUT:?} (hung?)",
                    self.port
                )
            }
            Err(e) => panic!("reading a reply from 127.0.0.1:{} failed: {e}", self.port),
        }
    }

    /// Reads one reply: `UnexpectedEof` when the peer closed, `WouldBlock`/`TimedOut` on timeout.
    pub fn try_read_reply(&mut self) -> io::Result<Reply> {
        loop {
            match parse(&self.buf[self.start..]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.fill()?;
        }
    }

    /// Reads more bytes into the buffer; a clean close is `UnexpectedEof`.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all commands (from a second thread, so a large pipeline cannot deadlock on full socket
    /// buffers) while reading their replies, and returns the replies in order.
    pub fn pipeline<C, A>(&mut self, cmds: &[C]) -> Vec<Reply>
    where
        C: AsRef<[A]>,
        A: AsRef<[u8]>,
    {
        let mut bytes = Vec::new();
        for cmd in cmds {
            bytes.extend_from_slice(&encode(cmd.as_ref()));
        }
        let mut writer = self.stream.try_clone().expect("clone the client socket");
        let port = self.port;
        thread::scope(|s| {
            let written = s.spawn(move || writer.write_all(&bytes));
            let replies: Vec<Reply> = (0..cmds.len()).map(|_| self.read_reply()).collect();
            if let Err(e) = written.join().expect("pipeline writer thread") {
                panic!("writing the pipeline to 127.0.0.1:{port} failed: {e}");
            }
            replies
        })
    }

    /// Whether the peer has closed the connection, waiting up to 5 s for it to do so. Meant for
    /// asserting a close; to check that a connection is still open, send PING instead.
    pub fn is_closed(&mut self) -> bool {
        self.wait_closed(Duration::from_secs(5))
    }

    /// True as soon as the peer closes (read returns 0, or the connection is reset); false if data
    /// arrives instead or `within` passes.
    pub fn wait_closed(&mut self, within: Duration) -> bool {
        if self.start < self.buf.len() {
            return false;
        }
        self.stream
            .set_read_timeout(Some(within))
            .expect("set read timeout");
        let closed = match self.fill() {
            Ok(()) => false,
            Err(e) => match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => true,
                _ if is_timeout(&e) => false,
                _ => panic!("waiting for 127.0.0.1:{} to close failed: {e}", self.port),
            },
        };
        let _ = self.stream.set_read_timeout(Some(IO_TIMEOUT));
        closed
    }

    /// Closes both directions without reading what the peer sent.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
