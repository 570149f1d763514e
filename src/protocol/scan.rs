//! Measuring backend replies without decoding them.

use super::request::parse_header;
use super::ProtocolError;

/// Finds where each reply in a backend's byte stream ends.
///
/// Aggregates are walked with a single counter of elements still to come (RESP is written in pre-order),
/// so nesting depth costs nothing. The scanner keeps its place, so a large reply arriving in many reads is
/// walked once. A reply is bounded in bytes (see [`ReplyScanner::new`]): a declared length or element
/// count that could only pass the bound is refused at its header, before any of it is buffered, and
/// no count can overflow.
#[derive(Debug)]
pub struct ReplyScanner {
    pos: usize,
    /// Elements still to read in the current reply; 0 when between replies.
    remaining: u64,
    /// Longest reply, in bytes.
    max: usize,
}

/// Redis's own `proto-max-bulk-len` default: the largest string a node holds unless told otherwise.
pub const DEFAULT_MAX_REPLY: usize = 512 << 20;

impl Default for ReplyScanner {
    fn default() -> Self {
        ReplyScanner::new(DEFAULT_MAX_REPLY)
    }
}

impl ReplyScanner {
    /// A scanner that refuses replies longer than `max` bytes.
    pub fn new(max: usize) -> ReplyScanner {
        ReplyScanner {
            pos: 0,
            remaining: 0,
            max,
        }
    }

    /// Returns the length of the complete reply at the start of `buf`, or `None` if more bytes are needed.
    /// `buf` must start where the previous complete reply ended, and must only grow between calls that
    /// returned `None`.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if self.remaining == 0 {
            self.pos = 0;
            self.remaining = 1;
        }
        while self.remaining > 0 {
            let room = self.max - self.pos.min(self.max);
            let Some((len, children)) = element(&buf[self.pos..], room)? else {
                return Ok(None);
            };
            if len > room {
                return Err(TOO_LONG);
            }
            self.pos += len;
            // Every element takes at least 3 bytes ("_\r\n"), so a count the bound cannot hold is
            // refused here; and with it, no sum of counts can overflow.
            self.remaining = self.remaining - 1 + children;
            if self.remaining > (self.max.saturating_sub(self.pos) / 3) as u64 {
                return Err(TOO_LONG);
            }
        }
        Ok(Some(self.pos))
    }
}

/// The error of a reply past its bound.
pub const TOO_LONG: ProtocolError =
    ProtocolError::new("reply longer than the bound (max_reply_bytes)");

/// One element's own bytes (header, plus payload for strings) and how many elements follow as its
/// children; `room` is how many bytes the reply may still take.
fn element(buf: &[u8], room: usize) -> Result<Option<(usize, u64)>, ProtocolError> {
    let Some(&marker) = buf.first() else {
        return Ok(None);
    };
    match marker {
        // Simple lines: status, error, integer, and RESP3 null, boolean, double, big number.
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {
            let Some(lf) = memchr_lf(&buf[..buf.len().min(room.saturating_add(1))]) else {
                if buf.len() > room {
                    return Err(TOO_LONG);
                }
                return Ok(None);
            };
            if lf == 0 || buf[lf - 1] != b'\r' {
                return Err(ProtocolError::new("line not terminated by CRLF"));
            }
            Ok(Some((lf + 1, 0)))
        }
        // Length-prefixed strings: bulk, and RESP3 blob error and verbatim string.
        b'$' | b'!' | b'=' => {
            let Some((len, header)) = parse_header(buf, 1)? else {
                return Ok(None);
            };
            if len < 0 {
                return if len == -1 {
                    Ok(Some((header, 0)))
                } else {
                    Err(ProtocolError::new("invalid bulk length"))
                };
            }
            // Refused before a byte of it is buffered.
            if len as u64 > room.saturating_sub(header + 2) as u64 {
                return Err(TOO_LONG);
            }
            let end = header + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::new("bulk string not terminated by CRLF"));
            }
            Ok(Some((end + 2, 0)))
        }
        // Aggregates: array, set, push; maps and attributes hold pairs.
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let Some((count, header)) = parse_header(buf, 1)? else {
                return Ok(None);
            };
            if count < -1 {
                return Err(ProtocolError::new("invalid multibulk length"));
            }
            // parse_header reads at most 18 digits: the doubling below cannot overflow.
            let count = count.max(0) as u64;
            let children = match marker {
                b'%' => count * 2,
                // An attribute annotates the reply that follows it.
                b'|' => count * 2 + 1,
                _ => count,
            };
            Ok(Some((header, children)))
        }
        _ => Err(ProtocolError::new("unknown reply type")),
    }
}

fn memchr_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_nested_replies_across_reads() {
        let input: &[u8] =
            b"*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n*-1\r\n+OK\r\n-ERR x\r\n%1\r\n+a\r\n:2\r\n";
        let lens = [31, 5, 8, 12];
        let mut scanner = ReplyScanner::default();
        let mut rest = input;
        for want in lens {
            for n in 0..want {
                assert_eq!(scanner.scan(&rest[..n]).unwrap(), None);
            }
            assert_eq!(scanner.scan(rest).unwrap(), Some(want));
            rest = &rest[want..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn lengths_past_the_bound_are_refused_at_their_header() {
        let mut scanner = ReplyScanner::new(1024);
        assert_eq!(scanner.scan(b"$2000\r\n"), Err(TOO_LONG));
        let mut scanner = ReplyScanner::new(1024);
        assert_eq!(scanner.scan(b"*1000\r\n"), Err(TOO_LONG));
        let mut scanner = ReplyScanner::new(1024);
        assert_eq!(scanner.scan(&[b'+'; 2000]), Err(TOO_LONG));
        // Nested counts that would overflow 64 bits.
        let mut scanner = ReplyScanner::default();
        let nested = b"%999999999999999999\r\n".repeat(12);
        assert!(scanner.scan(&nested).is_err());
        let mut scanner = ReplyScanner::new(usize::MAX);
        assert!(scanner.scan(&nested).is_err());
        // What fits is measured as before.
        let mut scanner = ReplyScanner::new(16);
        assert_eq!(scanner.scan(b"*2\r\n$1\r\na\r\n:1\r\n"), Ok(Some(15)));
        // Headers and lines count too: nothing measured passes the bound by a byte.
        for (reply, fits) in [(&b"+1234\r\n"[..], 7), (b"$0\r\n\r\n", 6), (b"$-1\r\n", 5)] {
            assert_eq!(ReplyScanner::new(fits).scan(reply), Ok(Some(fits)));
            assert_eq!(
                ReplyScanner::new(fits - 1).scan(reply),
                Err(TOO_LONG),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [&b"?\r\n"[..], b"$3\r\nabcd\r\n", b"*-2\r\n", b"+OK\n"] {
            assert!(ReplyScanner::default().scan(bad).is_err());
        }
    }
}
