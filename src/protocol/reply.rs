//! Replies slotline writes itself (local commands and errors). Backend replies never pass through here.

use bytes::{BufMut, BytesMut};

/// Appends RESP2 replies to an output buffer.
pub struct Reply<'a>(pub &'a mut BytesMut);

impl Reply<'_> {
    pub fn ok(&mut self) {
        self.0.put_slice(b"+OK\r\n");
    }

    pub fn status(&mut self, s: &str) {
        self.line(b'+', s.as_bytes());
    }

    /// An error line; `msg` starts with the error code (`ERR`, `CROSSSLOT`, ...). Line breaks, which
    /// would corrupt the stream, become spaces.
    pub fn error(&mut self, msg: &str) {
        self.line(b'-', msg.as_bytes());
    }

    pub fn int(&mut self, n: i64) {
        self.0.put_u8(b':');
        self.decimal(n);
        self.0.put_slice(b"\r\n");
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.0.reserve(data.len() + 16);
        self.0.put_u8(b'$');
        self.decimal(data.len() as i64);
        self.0.put_slice(b"\r\n");
        self.0.put_slice(data);
        self.0.put_slice(b"\r\n");
    }

    pub fn null(&mut self) {
        self.0.put_slice(b"$-1\r\n");
    }

    /// A request as a client would send it: an array of bulk strings.
    pub fn command(&mut self, args: &[&[u8]]) {
        self.array(args.len());
        for arg in args {
            self.bulk(arg);
        }
    }

    /// A RESP3 map header: `len` key/value pairs follow.
    pub fn map(&mut self, len: usize) {
        self.0.put_u8(b'%');
        self.decimal(len as i64);
        self.0.put_slice(b"\r\n");
    }

    /// `len` key/value pairs follow: a map for a RESP3 client, the same pairs as a flat array for a
    /// RESP2 one, as Redis answers them.
    pub fn pairs(&mut self, proto: u8, len: usize) {
        match proto {
            3 => self.map(len),
            _ => self.array(len * 2),
        }
    }

    /// A RESP3 set header: `len` elements follow.
    pub fn set(&mut self, len: usize) {
        self.0.put_u8(b'~');
        self.decimal(len as i64);
        self.0.put_slice(b"\r\n");
    }

    /// A RESP3 push header (pub/sub messages and confirmations): `len` elements follow.
    pub fn push(&mut self, len: usize) {
        self.0.put_u8(b'>');
        self.decimal(len as i64);
        self.0.put_slice(b"\r\n");
    }

    pub fn array(&mut self, len: usize) {
        self.0.put_u8(b'*');
        self.decimal(len as i64);
        self.0.put_slice(b"\r\n");
    }

    /// `n` in decimal. By hand: every split request writes a dozen of these, and `write!` through
    /// `fmt` showed up in profiles at a few percent of the proxy's time.
    fn decimal(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = n.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            self.0.put_u8(b'-');
        }
        self.0.put_slice(&digits[at..]);
    }

    fn line(&mut self, marker: u8, text: &[u8]) {
        self.0.reserve(text.len() + 3);
        self.0.put_u8(marker);
        for &b in text {
            self.0
                .put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        self.0.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_resp2() {
        let mut buf = BytesMut::new();
        let mut r = Reply(&mut buf);
        r.array(3);
        r.bulk(b"a\r\nb");
        r.int(-7);
        r.null();
        r.error("ERR bad\r\nthing");
        r.status("PONG");
        assert_eq!(
            &buf[..],
            b"*3\r\n$4\r\na\r\nb\r\n:-7\r\n$-1\r\n-ERR bad  thing\r\n+PONG\r\n"
        );
    }

    #[test]
    fn integers_at_the_edges() {
        for n in [0, 9, 10, -1, 1234567890, i64::MAX, i64::MIN] {
            let mut buf = BytesMut::new();
            Reply(&mut buf).int(n);
            assert_eq!(&buf[..], format!(":{n}\r\n").as_bytes());
        }
    }
}
