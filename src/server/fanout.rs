//! Requests answered by several backends together.
//!
//! Multi-key commands whose keys live on several backends: MGET, MSET, DEL, UNLINK, EXISTS and TOUCH are
//! cut into one sub-request per place (a cluster slot, or a server of a sharded pool) and the replies are
//! put back together in key order. Commands about the whole data set (KEYS, DBSIZE, SCRIPT LOAD ...) go
//! to every master as they are, and their replies are merged; SCAN walks the masters one after the
//! other, with the master's number in the cursor's top bits.
//!
//! A cluster refuses a multi-key command whose keys span slots even when one node owns them all, so a
//! cluster request is cut per slot; the sub-requests for one node still leave in one write, because they
//! queue on the same connection. Sharded pools are cut per server, as twemproxy does.

use bytes::{Bytes, BytesMut};

use crate::command::{Merge, Request, Split};
use crate::protocol::{parse_int, Reply, ReplyScanner};

/// SCAN cursors carry the master's number above this many bits of the master's own cursor (Redis
/// cursors index a hash table, far below 2^48 entries).
const SCAN_NODE_SHIFT: u32 = 48;
const SCAN_INNER: u64 = (1 << SCAN_NODE_SHIFT) - 1;

/// A client's SCAN cursor as (master number, that master's cursor).
pub(crate) fn scan_cursor(cursor: u64) -> (usize, u64) {
    ((cursor >> SCAN_NODE_SHIFT) as usize, cursor & SCAN_INNER)
}

/// The request with its argument `index` replaced by `value`.
pub(crate) fn with_arg(req: &Request<'_>, index: usize, value: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(req.frame.len() + 24);
    let mut out = Reply(&mut buf);
    out.array(req.argc());
    for i in 0..req.argc() {
        out.bulk(if i == index { value } else { req.arg(i) });
    }
    buf.freeze()
}

/// The request with only the arguments whose positions `keep` holds (ascending).
pub(crate) fn with_args(req: &Request<'_>, keep: &[usize]) -> Bytes {
    let args: Vec<&[u8]> = keep.iter().map(|&i| req.arg(i)).collect();
    let mut buf = BytesMut::with_capacity(req.frame.len());
    Reply(&mut buf).command(&args);
    buf.freeze()
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

/// Appends the sub-request carrying the keys numbered `keys` (with their values) to `buf`.
/// Arguments are copied as the client sent them when it sent an array, not encoded again.
pub(crate) fn encode_into(req: &Request<'_>, split: Split, keys: &[u32], buf: &mut BytesMut) {
    Reply(buf).array(1 + keys.len() * split.step);
    let mut put = |i: usize| match req.raw_arg(i) {
        Some(raw) => buf.extend_from_slice(raw),
        None => Reply(buf).bulk(req.arg(i)),
    };
    put(0);
    for &k in keys {
        for j in 0..split.step {
            put(1 + k as usize * split.step + j);
        }
    }
}

/// Puts the parts' replies together. `parts` holds each part's keys (ascending) and its reply; `nkeys`
/// is the number of keys of the whole request. An error reply from any part answers the whole command:
/// the one whose part holds the earliest key, so the client sees what Redis would have said first.
pub(crate) fn merge(merge: Merge, nkeys: usize, parts: &[(&[u32], &[u8])], out: &mut BytesMut) {
    // EXEC's reply already says what became of each queued command (EXECABORT included), and
    // SCRIPT KILL's errors are what the nodes running no script answer.
    let first_error = parts
        .iter()
        .filter(|(_, reply)| {
            !matches!(merge, Merge::Last | Merge::AnyOk) && reply.first() == Some(&b'-')
        })
        .min_by_key(|(keys, _)| keys.first().copied());
    if let Some((_, reply)) = first_error {
        out.extend_from_slice(reply);
        return;
    }
    match merge {
        Merge::Values => merge_values(nkeys, parts, out),
        Merge::AnyOk => {
            let best = parts.iter().map(|(_, r)| *r).min_by_key(|r| match r {
                r if *r == b"+OK\r\n" => 0,
                r if r.starts_with(b"-NOTBUSY") => 2,
                _ => 1,
            });
            match best {
                Some(reply) => out.extend_from_slice(reply),
                None => unexpected(out),
            }
        }
        // Composed by the session, which has slotline's own sections (NodeInfo) and the
        // transaction's local replies (Exec, see `splice_exec`).
        Merge::NodeInfo | Merge::Exec => unexpected(out),
        Merge::Running => {
            let running = parts.iter().map(|(_, r)| *r).find(|r| runs_script(r));
            match running.or_else(|| parts.first().map(|(_, r)| *r)) {
                Some(reply) => out.extend_from_slice(reply),
                None => unexpected(out),
            }
        }
        Merge::AllOk => {
            if parts.iter().all(|(_, reply)| *reply == b"+OK\r\n") {
                Reply(out).ok();
            } else {
                unexpected(out);
            }
        }
        // Resolved to Sum or Max by the pool's kind before the parts are sent.
        Merge::Sum | Merge::Max => {
            let Some(counts) = parts
                .iter()
                .map(|(_, r)| integer(r))
                .collect::<Option<Vec<_>>>()
            else {
                return unexpected(out);
            };
            let merged = match merge {
                Merge::Sum => counts.into_iter().fold(0i64, i64::saturating_add),
                _ => counts.into_iter().max().unwrap_or(0),
            };
            Reply(out).int(merged);
        }
        Merge::Concat | Merge::Union => {
            let Some(arrays) = parts
                .iter()
                .map(|(_, r)| array(r))
                .collect::<Option<Vec<_>>>()
            else {
                return unexpected(out);
            };
            let mut seen = std::collections::HashSet::new();
            let all: Vec<&[u8]> = arrays
                .into_iter()
                .flatten()
                .filter(|e| merge == Merge::Concat || seen.insert(*e))
                .collect();
            Reply(out).array(all.len());
            for element in all {
                out.extend_from_slice(element);
            }
        }
        Merge::SumPairs => sum_pairs(parts, out),
        Merge::Wait => {
            let counts: Option<Vec<i64>> = parts
                .iter()
                .skip(1)
                .step_by(2)
                .map(|(_, r)| integer(r))
                .collect();
            match counts.and_then(|c| c.into_iter().min()) {
                Some(least) => Reply(out).int(least),
                None => unexpected(out),
            }
        }
        Merge::Same => match parts.split_first() {
            Some(((_, first), rest)) if rest.iter().all(|(_, r)| r == first) => {
                out.extend_from_slice(first)
            }
            _ => Reply(out).error("ERR slotline: the nodes answered differently"),
        },
        Merge::AllHave => {
            let mut have: Option<Vec<i64>> = None;
            for (_, reply) in parts {
                let Some(flags) = array(reply).and_then(|e| e.iter().map(|f| integer(f)).collect())
                else {
                    return unexpected(out);
                };
                let flags: Vec<i64> = flags;
                have = Some(match have {
                    None => flags,
                    Some(h) if h.len() == flags.len() => {
                        h.iter().zip(&flags).map(|(a, b)| *a.min(b)).collect()
                    }
                    Some(_) => return unexpected(out),
                });
            }
            let have = have.unwrap_or_default();
            Reply(out).array(have.len());
            for flag in have {
                Reply(out).int(flag);
            }
        }
        Merge::AnyValue => {
            let found = parts
                .iter()
                .find(|(_, r)| !r.starts_with(b"$-1") && !r.starts_with(b"_"));
            match found {
                Some((_, reply)) => out.extend_from_slice(reply),
                None => Reply(out).null(),
            }
        }
        Merge::Last => match parts.last() {
            Some((_, reply)) => out.extend_from_slice(reply),
            None => unexpected(out),
        },
        Merge::Scan { node, nodes } => match parts {
            [(_, reply)] => scan_reply(reply, node, nodes, out),
            _ => unexpected(out),
        },
        Merge::Config { port } => match parts {
            [(_, reply)] => config_reply(reply, port, out),
            _ => unexpected(out),
        },
    }
}

/// A transaction's EXEC reply with the replies of the commands slotline answered itself put in their
/// places (`spliced`: place among all queued commands, reply). An EXEC that ran nothing (a watched key
/// changed) or failed is the client's as it is.
pub(crate) fn splice_exec(exec: &[u8], spliced: &[(usize, Bytes)], out: &mut BytesMut) {
    let Some((count, mut rest)) = line(exec, b'*').filter(|&(n, _)| n >= 0) else {
        return out.extend_from_slice(exec);
    };
    Reply(out).array(count as usize + spliced.len());
    let mut local = spliced.iter().peekable();
    // The replies already passed the connection's bound: this only finds where each one ends.
    let mut scanner = ReplyScanner::new(exec.len());
    for at in 0.. {
        if let Some((_, reply)) = local.next_if(|(place, _)| *place == at) {
            out.extend_from_slice(reply);
            continue;
        }
        match scanner.scan(rest) {
            Ok(Some(len)) => {
                out.extend_from_slice(&rest[..len]);
                rest = &rest[len..];
            }
            // Every node reply is in (and the rest are slotline's, at the end).
            _ => break,
        }
    }
    for (_, reply) in local {
        out.extend_from_slice(reply);
    }
}

/// Rewrites a master's SCAN reply `[cursor, keys]` so that the cursor names the master, and moves on
/// to the next master when this one is done.
fn scan_reply(reply: &[u8], node: usize, nodes: usize, out: &mut BytesMut) {
    let Some((2, rest)) = line(reply, b'*') else {
        return unexpected(out);
    };
    let Some((len, rest)) = line(rest, b'$') else {
        return unexpected(out);
    };
    let Some(len) = usize::try_from(len).ok().filter(|&l| rest.len() >= l + 2) else {
        return unexpected(out);
    };
    let (digits, keys) = (&rest[..len], &rest[len + 2..]);
    let Some(inner) = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
    else {
        return unexpected(out);
    };
    let cursor = match inner {
        0 if node + 1 < nodes => ((node + 1) as u64) << SCAN_NODE_SHIFT,
        0 => 0,
        inner if inner <= SCAN_INNER => ((node as u64) << SCAN_NODE_SHIFT) | inner,
        _ => return unexpected(out),
    };
    Reply(out).array(2);
    Reply(out).bulk(cursor.to_string().as_bytes());
    out.extend_from_slice(keys);
}

/// A node's CONFIG GET reply, `[name, value, ...]` (a map in RESP3), with the value of `port`
/// replaced by `port`; the rest as the node said it.
fn config_reply(reply: &[u8], port: u16, out: &mut BytesMut) {
    let pairs = line(reply, b'*')
        .and_then(|(n, rest)| Some((usize::try_from(n).ok()? / 2, rest)))
        .or_else(|| line(reply, b'%').and_then(|(n, rest)| Some((usize::try_from(n).ok()?, rest))));
    let Some((pairs, mut rest)) = pairs else {
        return out.extend_from_slice(reply);
    };
    let start = out.len();
    out.extend_from_slice(&reply[..reply.len() - rest.len()]);
    for _ in 0..pairs {
        let Some(name) = ReplyScanner::default().scan(rest).ok().flatten() else {
            break;
        };
        let (name, tail) = rest.split_at(name);
        let Some(value) = ReplyScanner::default().scan(tail).ok().flatten() else {
            break;
        };
        let (value, tail) = tail.split_at(value);
        out.extend_from_slice(name);
        match name == b"$4\r\nport\r\n" {
            true => Reply(out).bulk(port.to_string().as_bytes()),
            false => out.extend_from_slice(value),
        }
        rest = tail;
    }
    if !rest.is_empty() {
        // Not the reply this expects: the node's, as it is.
        out.truncate(start);
        out.extend_from_slice(reply);
    }
}

/// `[channel, count, ...]` from every node, for the same channels in the same order: the counts summed.
fn sum_pairs(parts: &[(&[u32], &[u8])], out: &mut BytesMut) {
    let mut merged: Option<(Vec<&[u8]>, Vec<i64>)> = None;
    for (_, reply) in parts {
        let Some(elements) = array(reply).filter(|e| e.len() % 2 == 0) else {
            return unexpected(out);
        };
        let (names, counts): (Vec<&[u8]>, Vec<&[u8]>) =
            elements.chunks(2).map(|pair| (pair[0], pair[1])).unzip();
        let Some(counts) = counts
            .iter()
            .map(|c| integer(c))
            .collect::<Option<Vec<i64>>>()
        else {
            return unexpected(out);
        };
        merged = Some(match merged {
            None => (names, counts),
            Some((first, sums)) if first == names => {
                let sums = sums.iter().zip(&counts).map(|(a, b)| a.saturating_add(*b));
                (first, sums.collect())
            }
            Some(_) => return unexpected(out),
        });
    }
    let (names, sums) = merged.unwrap_or_default();
    Reply(out).array(names.len() * 2);
    for (name, sum) in names.iter().zip(sums) {
        out.extend_from_slice(name);
        Reply(out).int(sum);
    }
}

/// Every element of an array reply.
fn array(reply: &[u8]) -> Option<Vec<&[u8]>> {
    let (len, _) = line(reply, b'*')?;
    let n = usize::try_from(len).ok()?;
    // `n` comes from a backend's reply: never reserve more than the reply could hold.
    let mut elements = Vec::with_capacity(n.min(reply.len() / 3));
    for_each_element(reply, n, |_, element| elements.push(element))?;
    Some(elements)
}

fn merge_values(nkeys: usize, parts: &[(&[u32], &[u8])], out: &mut BytesMut) {
    let mut values: Vec<&[u8]> = vec![&[]; nkeys];
    for (keys, reply) in parts {
        let mut fits = true;
        let whole = for_each_element(reply, keys.len(), |i, value| {
            match values.get_mut(keys[i] as usize) {
                Some(slot) => *slot = value,
                None => fits = false,
            }
        });
        if whole.is_none() || !fits {
            return unexpected(out);
        }
    }
    let size: usize = values.iter().map(|v| v.len()).sum();
    out.reserve(size + 16);
    Reply(out).array(nkeys);
    for value in values {
        out.extend_from_slice(value);
    }
}

/// Calls `each` with the number and bytes of every element of an array reply that must have exactly
/// `n` of them; None when it is not such a reply (`each` may have seen some elements by then).
fn for_each_element<'a>(
    reply: &'a [u8],
    n: usize,
    mut each: impl FnMut(usize, &'a [u8]),
) -> Option<()> {
    let (len, mut rest) = line(reply, b'*')?;
    if usize::try_from(len).ok()? != n {
        return None;
    }
    for i in 0..n {
        let size = ReplyScanner::default().scan(rest).ok()??;
        let (element, tail) = rest.split_at(size);
        each(i, element);
        rest = tail;
    }
    rest.is_empty().then_some(())
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

/// Whether a FUNCTION STATS reply names a running script: its `running_script` is not null
/// (`$-1` in RESP2, `_` in RESP3).
fn runs_script(reply: &[u8]) -> bool {
    const FIELD: &[u8] = b"running_script\r\n";
    reply
        .windows(FIELD.len())
        .position(|w| w == FIELD)
        .map(|at| &reply[at + FIELD.len()..])
        .is_some_and(|value| !value.starts_with(b"$-1\r\n") && !value.starts_with(b"_\r\n"))
}

fn unexpected(out: &mut BytesMut) {
    Reply(out).error("ERR slotline: a backend answered part of a split command unexpectedly");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Limits, RequestParser};

    fn split(name: &str) -> Split {
        match crate::command::lookup(name.as_bytes(), None).map(|s| s.route) {
            Ok(crate::command::Route::Split(split)) => split,
            other => panic!("{name} is {other:?}"),
        }
    }

    fn parsed(frame: &[u8], check: impl FnOnce(Request<'_>)) {
        let mut parser = RequestParser::new(Limits {
            max_request_bytes: 1 << 20,
        });
        assert_eq!(parser.parse(frame), Ok(Some(frame.len())));
        check(Request {
            frame: parser.frame(frame),
            args: parser.args(),
        });
    }

    #[test]
    fn parts_carry_their_keys_and_values() {
        let mset = split("mset");
        parsed(b"*7\r\n$4\r\nMSET\r\n$1\r\na\r\n$2\r\nva\r\n$1\r\nb\r\n$2\r\nvb\r\n$1\r\nc\r\n$0\r\n\r\n", |req| {
            assert_eq!(key_count(&req, mset), Some(3));
            assert_eq!(key(&req, mset, 2), b"c");
            let mut buf = BytesMut::new();
            encode_into(&req, mset, &[0, 2], &mut buf);
            assert_eq!(
                &buf[..],
                b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$2\r\nva\r\n$1\r\nc\r\n$0\r\n\r\n"
            );
        });
        parsed(
            b"*4\r\n$4\r\nMSET\r\n$1\r\na\r\n$2\r\nva\r\n$1\r\nb\r\n",
            |req| {
                assert_eq!(key_count(&req, mset), None, "a key without a value");
            },
        );
        let mget = split("mget");
        parsed(b"*3\r\n$4\r\nmget\r\n$1\r\na\r\n$1\r\nb\r\n", |req| {
            assert_eq!(key_count(&req, mget), Some(2));
            // Appended after what the buffer holds: the parts of one request share a buffer.
            let mut buf = BytesMut::from(&b"+before\r\n"[..]);
            encode_into(&req, mget, &[1], &mut buf);
            assert_eq!(&buf[..], b"+before\r\n*2\r\n$4\r\nmget\r\n$1\r\nb\r\n");
        });
        // Typed inline, the arguments have no bulk headers to copy: they are encoded.
        parsed(b"mget a  bb\r\n", |req| {
            let mut buf = BytesMut::new();
            encode_into(&req, mget, &[1, 0], &mut buf);
            assert_eq!(&buf[..], b"*3\r\n$4\r\nmget\r\n$2\r\nbb\r\n$1\r\na\r\n");
        });
        assert_eq!(
            crate::command::lookup(b"get", None).map(|s| s.route),
            Ok(crate::command::Route::Keyed)
        );
    }

    #[test]
    fn a_script_killed_anywhere_is_killed() {
        let none: &[u32] = &[];
        let notbusy: &[u8] = b"-NOTBUSY No scripts in execution right now.\r\n";
        let unkillable: &[u8] = b"-UNKILLABLE Sorry the script already executed write commands\r\n";
        assert_eq!(
            merged(
                Merge::AnyOk,
                0,
                &[(none, notbusy), (none, b"+OK\r\n"), (none, notbusy)]
            ),
            b"+OK\r\n"
        );
        assert_eq!(
            merged(Merge::AnyOk, 0, &[(none, notbusy), (none, unkillable)]),
            unkillable
        );
        assert_eq!(
            merged(Merge::AnyOk, 0, &[(none, notbusy), (none, notbusy)]),
            notbusy
        );
    }

    #[test]
    fn function_stats_come_from_the_master_that_runs_a_script() {
        let none: &[u32] = &[];
        let idle: &[u8] = b"*4\r\n$14\r\nrunning_script\r\n$-1\r\n$7\r\nengines\r\n*0\r\n";
        let idle3: &[u8] = b"%2\r\n$14\r\nrunning_script\r\n_\r\n$7\r\nengines\r\n%0\r\n";
        let busy: &[u8] = b"*4\r\n$14\r\nrunning_script\r\n*6\r\n$4\r\nname\r\n$4\r\ntest\r\n$7\r\ncommand\r\n*1\r\n$5\r\nfcall\r\n$11\r\nduration_ms\r\n:5\r\n$7\r\nengines\r\n*0\r\n";
        assert_eq!(
            merged(
                Merge::Running,
                0,
                &[(none, idle), (none, busy), (none, idle)]
            ),
            busy
        );
        assert_eq!(
            merged(Merge::Running, 0, &[(none, idle3), (none, idle3)]),
            idle3
        );
        assert_eq!(
            merged(Merge::Running, 0, &[(none, idle), (none, idle)]),
            idle
        );
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
    fn every_node_merges() {
        let none: &[u32] = &[];
        assert_eq!(
            merged(
                Merge::Concat,
                0,
                &[
                    (none, b"*1\r\n$1\r\na\r\n"),
                    (none, b"*0\r\n"),
                    (none, b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n")
                ]
            ),
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!(
            merged(
                Merge::Same,
                0,
                &[(none, b"$2\r\nab\r\n"), (none, b"$2\r\nab\r\n")]
            ),
            b"$2\r\nab\r\n"
        );
        assert_eq!(
            merged(
                Merge::Same,
                0,
                &[(none, b"$2\r\nab\r\n"), (none, b"$2\r\nxy\r\n")]
            ),
            b"-ERR slotline: the nodes answered differently\r\n"
        );
        assert_eq!(
            merged(
                Merge::AllHave,
                0,
                &[(none, b"*2\r\n:1\r\n:1\r\n"), (none, b"*2\r\n:0\r\n:1\r\n")]
            ),
            b"*2\r\n:0\r\n:1\r\n"
        );
        assert_eq!(
            merged(
                Merge::AnyValue,
                0,
                &[(none, b"$-1\r\n"), (none, b"$1\r\nk\r\n")]
            ),
            b"$1\r\nk\r\n"
        );
        assert_eq!(
            merged(Merge::AnyValue, 0, &[(none, b"$-1\r\n")]),
            b"$-1\r\n"
        );
    }

    #[test]
    fn pubsub_introspection_merges() {
        let none: &[u32] = &[];
        // A channel with subscribers on two nodes is named once.
        assert_eq!(
            merged(
                Merge::Union,
                0,
                &[
                    (none, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
                    (none, b"*0\r\n"),
                    (none, b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n")
                ]
            ),
            b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!(
            merged(
                Merge::SumPairs,
                0,
                &[
                    (none, b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:0\r\n"),
                    (none, b"*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:5\r\n")
                ]
            ),
            b"*4\r\n$1\r\na\r\n:3\r\n$1\r\nb\r\n:5\r\n"
        );
        // Nodes naming different channels cannot be summed.
        assert_eq!(
            merged(
                Merge::SumPairs,
                0,
                &[
                    (none, b"*2\r\n$1\r\na\r\n:1\r\n"),
                    (none, b"*2\r\n$1\r\nz\r\n:1\r\n")
                ]
            ),
            b"-ERR slotline: a backend answered part of a split command unexpectedly\r\n"
        );
    }

    #[test]
    fn config_get_shows_slotlines_port() {
        let config = |reply: &[u8]| merged(Merge::Config { port: 7000 }, 0, &[(&[], reply)]);
        assert_eq!(
            config(b"*4\r\n$7\r\ntimeout\r\n$1\r\n0\r\n$4\r\nport\r\n$4\r\n9512\r\n"),
            b"*4\r\n$7\r\ntimeout\r\n$1\r\n0\r\n$4\r\nport\r\n$4\r\n7000\r\n"
        );
        // RESP3 answers a map; a value named `port` is not a name.
        assert_eq!(
            config(b"%2\r\n$4\r\nport\r\n$1\r\n1\r\n$6\r\nignore\r\n$4\r\nport\r\n"),
            b"%2\r\n$4\r\nport\r\n$4\r\n7000\r\n$6\r\nignore\r\n$4\r\nport\r\n"
        );
        // Anything else is the node's, as it is.
        assert_eq!(config(b"*1\r\n$4\r\nport\r\n"), b"*1\r\n$4\r\nport\r\n");
        assert_eq!(config(b"-ERR no\r\n"), b"-ERR no\r\n");
    }

    #[test]
    fn scan_cursors_carry_the_master_and_move_on_when_it_is_done() {
        let reply = b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n";
        let on = |node, nodes| merged(Merge::Scan { node, nodes }, 0, &[(&[], reply)]);
        let first = format!(
            "*2\r\n${}\r\n{}\r\n*1\r\n$1\r\nk\r\n",
            ((1u64 << 48) | 17).to_string().len(),
            (1u64 << 48) | 17
        );
        assert_eq!(on(1, 3), first.as_bytes());
        assert_eq!(scan_cursor((1 << 48) | 17), (1, 17));
        let done = b"*2\r\n$1\r\n0\r\n*0\r\n";
        let next = format!("*2\r\n$15\r\n{}\r\n*0\r\n", 2u64 << 48);
        assert_eq!(
            merged(Merge::Scan { node: 1, nodes: 3 }, 0, &[(&[], done)]),
            next.as_bytes()
        );
        assert_eq!(
            merged(Merge::Scan { node: 2, nodes: 3 }, 0, &[(&[], done)]),
            b"*2\r\n$1\r\n0\r\n*0\r\n"
        );
        assert!(merged(
            Merge::Scan { node: 0, nodes: 1 },
            0,
            &[(&[], b"*2\r\n$3\r\nabc\r\n*0\r\n")]
        )
        .starts_with(b"-ERR"));
        // A huge element count from a backend is not trusted with an allocation.
        assert!(
            merged(Merge::Concat, 0, &[(&[], b"*9223372036854775807\r\n")]).starts_with(b"-ERR")
        );
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
