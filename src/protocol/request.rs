//! Client requests: RESP arrays of bulk strings, or inline commands typed by a human.

use bytes::{Bytes, BytesMut};

use super::{ProtocolError, Reply};

/// Bounds on what one client request may make the proxy hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request, in bytes, that will be buffered.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Longest inline command line, as in Redis (`PROTO_INLINE_MAX_SIZE`).
const MAX_INLINE: usize = 64 * 1024;
/// Longest `*N` / `$N` header line we accept before deciding the stream is garbage.
const MAX_HEADER: usize = 32;
/// Longest argument Redis takes (`proto-max-bulk-len`'s default): a longer one, forwarded, would make
/// the backend drop a connection other clients share, whatever `max_request_bytes` allows.
const MAX_BULK: i64 = 512 << 20;
/// Until a client has authenticated, Redis takes at most 10 arguments of 16 KiB each (CVE-2021-32675):
/// a few bytes of header must not make anyone reserve, or wait for, megabytes.
const UNAUTHENTICATED_ARGS: i64 = 10;
const UNAUTHENTICATED_BULK: i64 = 16 * 1024;

/// Cuts one request at a time from the front of a client's buffer.
///
/// The parser keeps its place between calls, so a request that arrives in pieces is not re-read from the
/// start each time. After `parse` returns `Ok(Some(len))`, [`args`](Self::args) holds the argument ranges
/// until the next call: offsets into the first `len` bytes, or for an inline command into the RESP
/// array it was encoded as ([`frame`](Self::frame) tells which).
#[derive(Debug, Default)]
pub struct RequestParser {
    args: Vec<(u32, u32)>,
    /// The last request, when it was an inline command, as a RESP array: backends get this, never
    /// the line, whose quoting Redis reads by rules of its own. Boxed: humans type inline commands,
    /// and every client's session keeps a parser (24 bytes fewer each).
    inline: Option<Box<Bytes>>,
    /// Arguments the array header announced; 0 while no header has been read.
    expected: usize,
    /// Where parsing resumes.
    pos: usize,
    /// Buffer length needed before parsing can progress (a hint for reserving capacity).
    need: usize,
    limits: Limits,
    /// The client has not authenticated yet: Redis's tighter limits apply.
    unauthenticated: bool,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            ..Default::default()
        }
    }

    /// Applies Redis's limits for clients that have not authenticated (10 arguments of 16 KiB at
    /// most), or lifts them.
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
    }

    /// Argument ranges of the last complete request.
    pub fn args(&self) -> &[(u32, u32)] {
        &self.args
    }

    /// The bytes [`args`](Self::args) index for the last complete request, whose `raw` bytes were
    /// cut from the input: `raw` itself, or the RESP array an inline command was encoded as.
    pub fn frame<'a>(&'a self, raw: &'a [u8]) -> &'a [u8] {
        self.inline.as_deref().map_or(raw, |frame| &frame[..])
    }

    /// [`frame`](Self::frame) for an inline command, taken: what to forward instead of its line.
    pub fn take_inline(&mut self) -> Option<Bytes> {
        self.inline.take().map(|frame| *frame)
    }

    /// A parser holding the arguments of `frame`, a whole request kept from an earlier parse (to
    /// read its arguments again); None if it is not one.
    pub fn parsed_again(frame: &[u8]) -> Option<RequestParser> {
        let mut parser = RequestParser::new(Limits {
            max_request_bytes: frame.len().max(1024),
        });
        matches!(parser.parse(frame), Ok(Some(_))).then_some(parser)
    }

    /// How many bytes the buffer must hold before the pending request can complete, if known.
    pub fn needed(&self) -> usize {
        self.need
    }

    /// Parses the request at the start of `buf`: `Ok(None)` means incomplete (call again with more bytes
    /// appended), `Ok(Some(len))` a complete request of `len` bytes. A request with no arguments (`*0`,
    /// an empty inline line) is complete with empty [`args`](Self::args); Redis skips those too.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if self.expected == 0 {
            if let Some(len) = self.parse_whole(buf) {
                return Ok(Some(len));
            }
            self.args.clear();
            self.inline = None;
            self.need = 0;
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            if first != b'*' {
                return self.parse_inline(buf);
            }
            let Some((count, header_len)) =
                parse_header(buf, 1).map_err(|_| ProtocolError::new("invalid multibulk length"))?
            else {
                return Ok(None);
            };
            if count <= 0 {
                return Ok(Some(header_len));
            }
            if self.unauthenticated && count > UNAUTHENTICATED_ARGS {
                return Err(ProtocolError::new("unauthenticated multibulk length"));
            }
            // Every argument takes at least 6 bytes ("$0\r\n\r\n").
            if count as usize > self.limits.max_request_bytes / 6 {
                return Err(ProtocolError::new("invalid multibulk length"));
            }
            self.expected = count as usize;
            self.pos = header_len;
            self.args.reserve(self.expected.min(64));
        }
        while self.args.len() < self.expected {
            let pos = self.pos;
            let Some(&marker) = buf.get(pos) else {
                return Ok(None);
            };
            if marker != b'$' {
                self.reset();
                return Err(ProtocolError::got("expected '$'", marker));
            }
            let Some((len, header_len)) = parse_header(&buf[pos..], 1).map_err(|_| {
                self.reset();
                ProtocolError::new("invalid bulk length")
            })?
            else {
                return Ok(None);
            };
            if self.unauthenticated && (0..=MAX_BULK).contains(&len) && len > UNAUTHENTICATED_BULK {
                self.reset();
                return Err(ProtocolError::new("unauthenticated bulk length"));
            }
            if !(0..=MAX_BULK).contains(&len) || (len as u64) > self.limits.max_request_bytes as u64
            {
                self.reset();
                return Err(ProtocolError::new("invalid bulk length"));
            }
            let start = pos + header_len;
            let end = start + len as usize;
            if end + 2 > self.limits.max_request_bytes {
                self.reset();
                return Err(ProtocolError::new("request exceeds the size limit"));
            }
            if buf.len() < end + 2 {
                self.need = end + 2;
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                self.reset();
                return Err(ProtocolError::new("bulk string not terminated by CRLF"));
            }
            self.args.push((start as u32, end as u32));
            self.pos = end + 2;
        }
        let len = self.pos;
        self.expected = 0;
        self.pos = 0;
        self.need = 0;
        Ok(Some(len))
    }

    /// The usual request, read in one pass: an array of bulk strings whose headers all have one
    /// or two digits, already whole in `buf`. None for anything else, an incomplete request too:
    /// [`parse`](Self::parse) then reads it from the start, and says what is wrong with it. (A GET
    /// took 304 instructions on the general path, which keeps its place between calls and checks
    /// every bound on every argument, and takes 197 here; those bounds all hold for what this path
    /// accepts but the size limit, checked once at the end.)
    #[inline]
    fn parse_whole(&mut self, buf: &[u8]) -> Option<usize> {
        let (count, mut pos) = short_header(buf, 0, b'*')?;
        if count == 0 || (self.unauthenticated && count > UNAUTHENTICATED_ARGS as usize) {
            return None;
        }
        self.args.clear();
        self.args.reserve(count);
        for _ in 0..count {
            let (len, header) = short_header(buf, pos, b'$')?;
            let start = pos + header;
            let end = start + len;
            if buf.get(end..end + 2)? != b"\r\n" {
                return None;
            }
            self.args.push((start as u32, end as u32));
            pos = end + 2;
        }
        if pos > self.limits.max_request_bytes {
            return None;
        }
        self.inline = None;
        self.need = 0;
        Some(pos)
    }

    fn reset(&mut self) {
        self.expected = 0;
        self.pos = 0;
        self.need = 0;
        self.args.clear();
    }

    /// `GET key "a value"\r\n`, as typed into telnet: split as Redis splits it (`sdssplitargs`),
    /// quotes and escapes included, and encoded as a RESP array for the backends.
    fn parse_inline(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let window = &buf[..buf.len().min(MAX_INLINE)];
        let Some(nl) = window.iter().position(|&b| b == b'\n') else {
            if buf.len() >= MAX_INLINE {
                return Err(ProtocolError::new("too big inline request"));
            }
            return Ok(None);
        };
        let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let words = split_inline(&buf[..line_end])?;
        if !words.is_empty() {
            let size: usize = words.iter().map(|w| w.len() + 16).sum();
            let mut frame = BytesMut::with_capacity(size + 16);
            Reply(&mut frame).array(words.len());
            for word in &words {
                Reply(&mut frame).bulk(word);
                // The word lies before the CRLF that ends it.
                let end = frame.len() - 2;
                self.args.push(((end - word.len()) as u32, end as u32));
            }
            self.inline = Some(Box::new(frame.freeze()));
        }
        Ok(Some(nl + 1))
    }
}

/// The words of an inline command line, as Redis's `sdssplitargs` finds them: separated by white
/// space; in "double quotes" with \n \r \t \b \a \xHH and \<any> escapes, in 'single quotes' with \'
/// only; a closing quote must end the word. A NUL byte is refused: Redis, reading the line as a C
/// string, would never find its end.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    const UNBALANCED: ProtocolError = ProtocolError::new("unbalanced quotes in request");
    if line.contains(&0) {
        return Err(ProtocolError::new("NUL byte in an inline request"));
    }
    let at = |i: usize| line.get(i).copied();
    // C's isspace: what may separate words and must follow a closing quote.
    let space = |b: Option<u8>| matches!(b, Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c));
    let mut words = Vec::new();
    let mut p = 0;
    loop {
        while space(at(p)) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(words);
        }
        let mut word = Vec::new();
        let (mut double, mut single) = (false, false);
        loop {
            let c = at(p);
            if double {
                match c {
                    None => return Err(UNBALANCED),
                    Some(b'\\')
                        if at(p + 1) == Some(b'x')
                            && at(p + 2).is_some_and(|b| b.is_ascii_hexdigit())
                            && at(p + 3).is_some_and(|b| b.is_ascii_hexdigit()) =>
                    {
                        let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                        word.push(hex(line[p + 2]) * 16 + hex(line[p + 3]));
                        p += 3;
                    }
                    Some(b'\\') if at(p + 1).is_some() => {
                        p += 1;
                        word.push(match line[p] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if at(p + 1).is_some() && !space(at(p + 1)) {
                            return Err(UNBALANCED);
                        }
                        p += 1;
                        break;
                    }
                    Some(b) => word.push(b),
                }
            } else if single {
                match c {
                    None => return Err(UNBALANCED),
                    Some(b'\\') if at(p + 1) == Some(b'\'') => {
                        p += 1;
                        word.push(b'\'');
                    }
                    Some(b'\'') => {
                        if at(p + 1).is_some() && !space(at(p + 1)) {
                            return Err(UNBALANCED);
                        }
                        p += 1;
                        break;
                    }
                    Some(b) => word.push(b),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => double = true,
                    Some(b'\'') => single = true,
                    Some(b) => word.push(b),
                }
            }
            p += 1;
        }
        words.push(word);
    }
}

/// `<marker><one or two digits>\r\n` at `buf[at..]`, as Redis writes them (no leading zero): the
/// value and the header's length. None for any other header, or one not whole in `buf`.
#[inline]
fn short_header(buf: &[u8], at: usize, marker: u8) -> Option<(usize, usize)> {
    match buf.get(at..at + 4)? {
        [m, d @ b'0'..=b'9', b'\r', b'\n'] if *m == marker => Some((usize::from(d - b'0'), 4)),
        [m, t @ b'1'..=b'9', d @ b'0'..=b'9', b'\r']
            if *m == marker && buf.get(at + 4) == Some(&b'\n') =>
        {
            Some((usize::from(t - b'0') * 10 + usize::from(d - b'0'), 5))
        }
        _ => None,
    }
}

/// Parses `<marker><integer>\r\n` starting after the marker at `buf[0]`; returns the value and the
/// header's length including the CRLF. One pass over the digits, read as [`parse_int`] reads them.
pub(super) fn parse_header(buf: &[u8], skip: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    const INVALID: ProtocolError = ProtocolError::new("invalid length");
    // Most headers of a request are one or two digits (`*2`, `$3`, `$12`): read at a glance.
    match buf.get(skip..skip + 4) {
        Some([d @ b'0'..=b'9', b'\r', b'\n', _]) => {
            return Ok(Some((i64::from(d - b'0'), skip + 3)))
        }
        Some([t @ b'1'..=b'9', d @ b'0'..=b'9', b'\r', b'\n']) => {
            return Ok(Some((
                i64::from(t - b'0') * 10 + i64::from(d - b'0'),
                skip + 4,
            )))
        }
        _ => {}
    }
    let end = buf.len().min(MAX_HEADER);
    let mut i = skip;
    let negative = buf.get(i) == Some(&b'-');
    i += usize::from(negative);
    let digits = i;
    let mut value: i64 = 0;
    while i < end {
        match buf[i] {
            b @ b'0'..=b'9' => {
                if i - digits == 18 {
                    return Err(INVALID);
                }
                value = value * 10 + i64::from(b - b'0');
                i += 1;
            }
            b'\r' => break,
            _ => return Err(INVALID),
        }
    }
    if i >= end {
        if buf.len() >= MAX_HEADER {
            return Err(ProtocolError::new("invalid length header"));
        }
        return Ok(None);
    }
    // `0`, or digits without a leading zero (a `-` before any but zero).
    let count = i - digits;
    if count == 0 || (buf[digits] == b'0' && (count > 1 || negative)) {
        return Err(INVALID);
    }
    match buf.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((if negative { -value } else { value }, i + 2))),
        Some(_) => Err(ProtocolError::new("length header not terminated by CRLF")),
    }
}

/// A decimal integer as Redis writes and reads it (`string2ll`): `0`, or an optional '-' then 1 to 18
/// digits without a leading zero. Redis refuses anything else in a request (`$03` is "invalid bulk
/// length" and closes the connection), so slotline must not accept what it would then forward.
pub fn parse_int(digits: &[u8]) -> Option<i64> {
    if digits == b"0" {
        return Some(0);
    }
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 || digits[0] == b'0' {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(d - b'0');
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut parser = RequestParser::new(Limits::default());
        let mut out = Vec::new();
        let mut rest = input;
        while let Some(len) = parser.parse(rest)? {
            let frame = parser.frame(&rest[..len]);
            let args = parser
                .args()
                .iter()
                .map(|&(s, e)| frame[s as usize..e as usize].to_vec())
                .collect();
            out.push(args);
            rest = &rest[len..];
        }
        Ok(out)
    }

    /// Every input in `bad` is a protocol error.
    fn refused(bad: &[&[u8]]) {
        for &bad in bad {
            assert!(
                parse_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn arrays_and_inline_commands() {
        let got =
            parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset  a\tb\r\n\r\n*0\r\n").unwrap();
        let want: Vec<Vec<&[u8]>> = vec![
            vec![b"GET", b"k"],
            vec![b"PING"],
            vec![b"set", b"a", b"b"],
            vec![],
            vec![],
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.iter().map(Vec::as_slice).collect::<Vec<_>>(), *w);
        }
    }

    #[test]
    fn before_auth_redis_limits_apply_at_the_header() {
        let mut parser = RequestParser::new(Limits::default());
        parser.set_unauthenticated(true);
        assert_eq!(
            parser.parse(b"*100\r\n"),
            Err(ProtocolError::new("unauthenticated multibulk length"))
        );
        assert_eq!(
            parser.parse(b"*1\r\n$100000000\r\n"),
            Err(ProtocolError::new("unauthenticated bulk length"))
        );
        let auth = b"*2\r\n$4\r\nAUTH\r\n$16384\r\n";
        assert_eq!(parser.parse(auth), Ok(None), "16 KiB is allowed");
        assert_eq!(parser.needed(), auth.len() + 16384 + 2);
        let mut parser = RequestParser::new(Limits::default());
        parser.set_unauthenticated(true);
        assert_eq!(parser.parse(b"*10\r\n"), Ok(None));
        parser.set_unauthenticated(false);
        let mut parser = RequestParser::new(Limits::default());
        assert_eq!(parser.parse(b"*100\r\n$1000000\r\n"), Ok(None));
    }

    #[test]
    fn byte_at_a_time_resumes_where_it_stopped() {
        let input = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n";
        let mut parser = RequestParser::new(Limits::default());
        for n in 0..input.len() {
            assert_eq!(
                parser.parse(&input[..n]).unwrap(),
                None,
                "prefix of {n} bytes"
            );
        }
        assert_eq!(parser.parse(input).unwrap(), Some(input.len()));
        let (s, e) = parser.args()[2];
        assert_eq!(&input[s as usize..e as usize], b"va\r\nl");
    }

    /// The requests in `input`, read as it arrives one byte at a time: every request but a one-byte
    /// one takes the general path, which keeps its place between reads.
    fn parse_bytewise(
        input: &[u8],
        unauthenticated: bool,
    ) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut parser = RequestParser::new(Limits {
            max_request_bytes: 200,
        });
        parser.set_unauthenticated(unauthenticated);
        let (mut out, mut start) = (Vec::new(), 0);
        for end in 1..=input.len() {
            while let Some(len) = parser.parse(&input[start..end])? {
                let frame = parser.frame(&input[start..start + len]);
                out.push(
                    parser
                        .args()
                        .iter()
                        .map(|&(s, e)| frame[s as usize..e as usize].to_vec())
                        .collect(),
                );
                start += len;
            }
        }
        Ok(out)
    }

    #[test]
    fn a_request_read_whole_is_read_as_one_that_arrives_in_pieces() {
        // Arrays of short bulk strings, most of them well formed, some with the faults a header or a
        // terminator can have: the one-pass path must accept exactly what the general one does.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..1 + next(3) {
                let count = [0, 1, 2, 3, 10, 11, 12][next(7) as usize];
                match next(12) {
                    0 => input.extend_from_slice(format!("*0{count}\r\n").as_bytes()),
                    1 => input.extend_from_slice(format!("*{count}\n").as_bytes()),
                    _ => input.extend_from_slice(format!("*{count}\r\n").as_bytes()),
                }
                for _ in 0..count {
                    let len = [0, 1, 3, 9, 10, 16, 99, 100][next(8) as usize];
                    let header = match next(40) {
                        0 => format!("$0{len}\r\n"),
                        1 => format!("${}\r\n", len + 1),
                        2 => format!("$-{len}\r\n"),
                        3 => format!("+{len}\r\n"),
                        _ => format!("${len}\r\n"),
                    };
                    input.extend_from_slice(header.as_bytes());
                    input.extend((0..len).map(|i| b"ab\r\n$*"[(i + next(2) as usize) % 6]));
                    input.extend_from_slice(if next(60) == 0 { b"\n\r" } else { b"\r\n" });
                }
            }
            for unauthenticated in [false, true] {
                let mut parser = RequestParser::new(Limits {
                    max_request_bytes: 200,
                });
                parser.set_unauthenticated(unauthenticated);
                let mut whole = Vec::new();
                let mut rest = &input[..];
                let whole = loop {
                    match parser.parse(rest) {
                        Ok(Some(len)) => {
                            let frame = parser.frame(&rest[..len]);
                            whole.push(
                                parser
                                    .args()
                                    .iter()
                                    .map(|&(s, e)| frame[s as usize..e as usize].to_vec())
                                    .collect::<Vec<_>>(),
                            );
                            rest = &rest[len..];
                        }
                        Ok(None) => break Ok(whole),
                        Err(e) => break Err(e),
                    }
                };
                assert_eq!(
                    whole.map_err(|e| e.to_string()),
                    parse_bytewise(&input, unauthenticated).map_err(|e| e.to_string()),
                    "{:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        refused(&[
            &b"*abc\r\n"[..],
            b"*1\r\n:5\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*99999999999\r\n",
            b"*1\r\n$4294967296\r\n",
            b"*1\r\n$12345678901234567890123\r\n",
            b"*1\n$3\r\nfoo\r\n",
            // Lengths Redis itself refuses (it would close a shared backend connection over them).
            b"*1\r\n$03\r\nfoo\r\n",
            b"*01\r\n$3\r\nfoo\r\n",
            b"*1\r\n$+3\r\nfoo\r\n",
            b"*1\r\n$-0\r\n",
            b"*1\r\n$00\r\n\r\n",
        ]);
    }

    #[test]
    fn inline_commands_are_split_as_redis_splits_them() {
        let cases: [(&[u8], &[&[u8]]); 9] = [
            (b"SET \"a b\" c\r\n", &[b"SET", b"a b", b"c"]),
            (b"ECHO a\"b c\"\n", &[b"ECHO", b"ab c"]),
            (b"ECHO \"x\\ny\\x41\\q\"\r\n", &[b"ECHO", b"x\nyAq"]),
            (b"ECHO 'it\\'s' '\\n'\r\n", &[b"ECHO", b"it's", b"\\n"]),
            (b"ECHO '' \"\"\r\n", &[b"ECHO", b"", b""]),
            (b"  GET\tk \x0b\r\n", &[b"GET", b"k"]),
            (b"ECHO\x0bx\r\n", &[b"ECHO\x0bx"]),
            (b"ECHO \"a\"\t\"b\"\r\n", &[b"ECHO", b"a", b"b"]),
            (b"ECHO \"\\x4\"\r\n", &[b"ECHO", b"x4"]),
        ];
        for (line, want) in cases {
            let got = parse_all(line).unwrap_or_else(|e| panic!("{line:?}: {e:?}"));
            let want: Vec<Vec<u8>> = want.iter().map(|w| w.to_vec()).collect();
            assert_eq!(got, vec![want], "{:?}", String::from_utf8_lossy(line));
        }
        refused(&[
            &b"GET \"a\r\n"[..],
            b"GET 'a\r\n",
            b"GET \"a\"b\r\n",
            b"GET 'a'b\r\n",
            b"GET a\0b\r\n",
        ]);
        // What travels on is a RESP array, whatever the line looked like.
        let mut parser = RequestParser::new(Limits::default());
        let line = b"set 'a b' \"c\\n\"\r\n";
        assert_eq!(parser.parse(line), Ok(Some(line.len())));
        assert_eq!(
            parser.take_inline().as_deref(),
            Some(&b"*3\r\n$3\r\nset\r\n$3\r\na b\r\n$2\r\nc\n\r\n"[..])
        );
    }

    #[test]
    fn integers_read_as_redis_reads_them() {
        for (text, value) in [
            (&b"0"[..], Some(0)),
            (b"7", Some(7)),
            (b"-1", Some(-1)),
            (b"120", Some(120)),
            (b"00", None),
            (b"07", None),
            (b"-0", None),
            (b"+7", None),
            (b"", None),
            (b"-", None),
            (b"1x", None),
        ] {
            assert_eq!(parse_int(text), value, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn limits_bound_what_is_buffered() {
        let mut parser = RequestParser::new(Limits {
            max_request_bytes: 100,
        });
        assert!(parser.parse(b"*1\r\n$200\r\n").is_err());
        // Whatever the limit, no argument longer than Redis takes.
        let mut roomy = RequestParser::new(Limits {
            max_request_bytes: 1 << 30,
        });
        assert!(roomy.parse(b"*1\r\n$536870913\r\n").is_err());
        assert_eq!(roomy.parse(b"*1\r\n$536870912\r\n"), Ok(None));
        assert!(parser.parse(b"*50\r\n").is_err());
        assert!(parse_all(&[b'x'; MAX_INLINE + 1]).is_err());
    }
}
