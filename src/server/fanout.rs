//! Multi-key commands whose keys live on several backends: MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are
//! cut into one sub-request per place (a cluster slot, or a server of a sharded pool) and the replies are
//! put back together in key order.
//!
//! A cluster refuses a multi-key command whose keys span slots even when one node owns them all, so a
//! cluster request is cut per slot; the sub-requests for one node still leave in one write, because they
//! queue on the same connection. Sharded pools are cut per server, as twemproxy does.

use bytes::{Bytes, BytesMut};

use crate::command::Request;
use crate::protocol::{parse_int, Reply, ReplyScanner};

/// How the replies of the parts become the client's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    /// MGET: each part answers an array of values; the client gets one array in key order.
    Values,
    /// MSET: every part answers +OK.
    AllOk,
    /// DEL, UNLINK, EXISTS, TOUCH: each part answers a count; the client gets the sum.
    Sum,
}

/// How a splittable command is laid out and merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Split {
    pub merge: Merge,
    /// Arguments per key: 2 for MSET (key and value), 1 otherwise.
    pub step: usize,
}

/// The split policy for a command, by its table name; None when it cannot be split.
pub(crate) fn policy(name: &str) -> Option<Split> {
    let (merge, step) = match name {
        "mget" => (Merge::Values, 1),
        "mset" => (Merge::AllOk, 2),
        "del" | "unlink" | "exists" | "touch" => (Merge::Sum, 1),
        _ => return None,
    };
    Some(Split { merge, step })
}

/// Number of keys in a request laid out as `NAME key [value] key [value] ...`; None when the arguments
/// do not divide into whole groups (MSET with a key and no value).
pub(crate) fn key_count(req: &Request<'_>, split: Split) -> Option<usize> {
    let rest = req.argc().checked_sub(1)?;
    (rest > 0 && rest % split.step == 0).then_some(rest / split.step)
}

/// The key number `k` of a request (0-based, in the client's order).
pub(crate) fn key<'a>(req: &Request<'a>, split: Split, k: usize) -> &'a [u8] {
    req.arg(1 + k * split.step)
}

/// The sub-request carrying the keys numbered `keys` (with their values).
pub(crate) fn encode(req: &Request<'_>, split: Split, keys: &[u32]) -> Bytes {
    let mut size = 16 + req.arg(0).len();
    for &k in keys {
        for j in 0..split.step {
            size += 16 + req.arg(1 + k as usize * split.step + j).len();
        }
    }
    let mut buf = BytesMut::with_capacity(size);
    let mut out = Reply(&mut buf);
    out.array(1 + keys.len() * split.step);
    out.bulk(req.arg(0));
    for &k in keys {
        for j in 0..split.step {
            out.bulk(req.arg(1 + k as usize * split.step + j));
        }
    }
    buf.freeze()
}

/// Puts the parts' replies together. `parts` holds each part's keys (ascending) and its reply; `nkeys`
/// is the number of keys of the whole request. An error reply from any part answers the whole command:
/// the one whose part holds the earliest key, so the client sees what Redis would have said first.
pub(crate) fn merge(merge: Merge, nkeys: usize, parts: &[(&[u32], &[u8])], out: &mut BytesMut) {
    let first_error = parts
        .iter()
        .filter(|(_, reply)| reply.first() == Some(&b'-'))
        .min_by_key(|(keys, _)| keys.first().copied());
    if let Some((_, reply)) = first_error {
        out.extend_from_slice(reply);
        return;
    }
    match merge {
        Merge::Values => merge_values(nkeys, parts, out),
        Merge::AllOk => {
            if parts.iter().all(|(_, reply)| *reply == b"+OK\r\n") {
                Reply(out).ok();
            } else {
                unexpected(out);
            }
        }
        Merge::Sum => {
            let mut sum: i64 = 0;
            for (_, reply) in parts {
                match integer(reply) {
                    Some(n) => sum = sum.saturating_add(n),
                    None => return unexpected(out),
                }
            }
            Reply(out).int(sum);
        }
    }
}

fn merge_values(nkeys: usize, parts: &[(&[u32], &[u8])], out: &mut BytesMut) {
    let mut values: Vec<&[u8]> = vec![&[]; nkeys];
    for (keys, reply) in parts {
        let Some(elements) = elements(reply, keys.len()) else {
            return unexpected(out);
        };
        for (&k, value) in keys.iter().zip(elements) {
            match values.get_mut(k as usize) {
                Some(slot) => *slot = value,
                None => return unexpected(out),
            }
        }
    }
    let size: usize = values.iter().map(|v| v.len()).sum();
    out.reserve(size + 16);
    Reply(out).array(nkeys);
    for value in values {
        out.extend_from_slice(value);
    }
}

/// The elements of an array reply that must have exactly `n` of them.
fn elements(reply: &[u8], n: usize) -> Option<Vec<&[u8]>> {
    let (len, mut rest) = line(reply, b'*')?;
    if usize::try_from(len).ok()? != n {
        return None;
    }
    let mut elements = Vec::with_capacity(n);
    for _ in 0..n {
        let size = ReplyScanner::default().scan(rest).ok()??;
        let (element, tail) = rest.split_at(size);
        elements.push(element);
        rest = tail;
    }
    rest.is_empty().then_some(elements)
}

fn integer(reply: &[u8]) -> Option<i64> {
    match line(reply, b':')? {
        (n, []) => Some(n),
        _ => None,
    }
}

/// A `<marker><integer>\r\n` line at the start of `reply`, and what follows it.
fn line(reply: &[u8], marker: u8) -> Option<(i64, &[u8])> {
    let body = reply.strip_prefix(&[marker])?;
    let end = body.windows(2).position(|w| w == b"\r\n")?;
    Some((parse_int(&body[..end])?, &body[end + 2..]))
}

fn unexpected(out: &mut BytesMut) {
    Reply(out).error("ERR slotline: a backend answered part of a split command unexpectedly");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Limits, RequestParser};

    fn parsed(frame: &[u8], check: impl FnOnce(Request<'_>)) {
        let mut parser = RequestParser::new(Limits {
            max_request_bytes: 1 << 20,
        });
        assert_eq!(parser.parse(frame), Ok(Some(frame.len())));
        check(Request {
            frame,
            args: parser.args(),
        });
    }

    #[test]
    fn parts_carry_their_keys_and_values() {
        let mset = policy("mset").unwrap();
        parsed(b"*7\r\n$4\r\nMSET\r\n$1\r\na\r\n$2\r\nva\r\n$1\r\nb\r\n$2\r\nvb\r\n$1\r\nc\r\n$0\r\n\r\n", |req| {
            assert_eq!(key_count(&req, mset), Some(3));
            assert_eq!(key(&req, mset, 2), b"c");
            assert_eq!(
                &encode(&req, mset, &[0, 2])[..],
                b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$2\r\nva\r\n$1\r\nc\r\n$0\r\n\r\n"
            );
        });
        parsed(
            b"*4\r\n$4\r\nMSET\r\n$1\r\na\r\n$2\r\nva\r\n$1\r\nb\r\n",
            |req| {
                assert_eq!(key_count(&req, mset), None, "a key without a value");
            },
        );
        let mget = policy("mget").unwrap();
        parsed(b"*3\r\n$4\r\nmget\r\n$1\r\na\r\n$1\r\nb\r\n", |req| {
            assert_eq!(key_count(&req, mget), Some(2));
            assert_eq!(
                &encode(&req, mget, &[1])[..],
                b"*2\r\n$4\r\nmget\r\n$1\r\nb\r\n"
            );
        });
        assert_eq!(policy("get"), None);
    }

    fn merged(merge: Merge, nkeys: usize, parts: &[(&[u32], &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        super::merge(merge, nkeys, parts, &mut out);
        out.to_vec()
    }

    #[test]
    fn values_come_back_in_key_order() {
        let got = merged(
            Merge::Values,
            4,
            &[
                (&[0, 3], b"*2\r\n$2\r\nv0\r\n$-1\r\n"),
                (&[1, 2], b"*2\r\n$0\r\n\r\n$5\r\nv\r\n2x\r\n"),
            ],
        );
        assert_eq!(got, b"*4\r\n$2\r\nv0\r\n$0\r\n\r\n$5\r\nv\r\n2x\r\n$-1\r\n");
    }

    #[test]
    fn counts_are_summed_and_oks_collapse() {
        assert_eq!(
            merged(Merge::Sum, 3, &[(&[0], b":1\r\n"), (&[1, 2], b":2\r\n")]),
            b":3\r\n"
        );
        assert_eq!(
            merged(Merge::AllOk, 2, &[(&[0], b"+OK\r\n"), (&[1], b"+OK\r\n")]),
            b"+OK\r\n"
        );
    }

    #[test]
    fn the_earliest_keys_error_answers_the_whole_command() {
        let got = merged(
            Merge::Values,
            3,
            &[
                (&[1], b"-ERR second\r\n"),
                (&[0, 2], b"-WRONGTYPE first\r\n"),
            ],
        );
        assert_eq!(got, b"-WRONGTYPE first\r\n");
    }

    #[test]
    fn malformed_part_replies_become_an_error_not_a_corrupt_stream() {
        let error = b"-ERR slotline: a backend answered part of a split command unexpectedly\r\n";
        for parts in [
            &[(&[0u32][..], &b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"[..])][..],
            &[(&[0u32][..], &b":1\r\n"[..])][..],
            &[(&[0u32][..], &b"*1\r\n$1\r\na\r\n:9\r\n"[..])][..],
            &[(&[7u32][..], &b"*1\r\n$1\r\na\r\n"[..])][..],
        ] {
            assert_eq!(merged(Merge::Values, 1, parts), error);
        }
        assert_eq!(merged(Merge::Sum, 1, &[(&[0], b"+OK\r\n")]), error);
        assert_eq!(merged(Merge::AllOk, 1, &[(&[0], b":1\r\n")]), error);
    }
}
