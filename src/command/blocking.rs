//! Where a blocking command keeps its timeout, so that a command sent again after it already
//! waited (its master was demoted under it, or its slot moved) waits only for what is left.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::protocol::{Reply, RequestParser};

/// The shortest wait a resent command is given: its timeout had run out, and the node answers it
/// as timed out (a timeout of 0 would block for ever).
const LEAST_MS: u64 = 1;

/// Where a command's timeout is, and in what unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timeout {
    /// Seconds, a decimal number (`BLPOP key 2.5`): argument `at`.
    Seconds { at: usize },
    /// Milliseconds, an integer (`XREAD BLOCK 2500`): argument `at`.
    Millis { at: usize },
}

/// `frame` (a whole request, as the client sent it) with the time it already `waited` taken off its
/// timeout. The frame itself when its timeout is 0 (it blocks until served) or it waited no whole
/// millisecond; None when it is not a blocking command whose timeout slotline can find (BLPOP,
/// BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP, XREAD and XREADGROUP with BLOCK),
/// or its timeout is not a number Redis would take.
pub fn with_time_left(frame: &Bytes, waited: Duration) -> Option<Bytes> {
    let parser = RequestParser::parsed_again(frame)?;
    let args: Vec<&[u8]> = parser
        .args()
        .iter()
        .map(|&(start, end)| &frame[start as usize..end as usize])
        .collect();
    let timeout = timeout_of(&args)?;
    let (at, ms) = match timeout {
        Timeout::Seconds { at } => (at, seconds_as_millis(args.get(at)?)?),
        Timeout::Millis { at } => (at, millis(args.get(at)?)?),
    };
    let waited = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 || waited == 0 {
        return Some(frame.clone());
    }
    let left = ms.saturating_sub(waited).max(LEAST_MS);
    let left = match timeout {
        Timeout::Seconds { .. } => format!("{}.{:03}", left / 1000, left % 1000),
        Timeout::Millis { .. } => left.to_string(),
    };
    let mut out = BytesMut::with_capacity(frame.len() + 8);
    let mut with_left = args;
    with_left[at] = left.as_bytes();
    Reply(&mut out).command(&with_left);
    Some(out.freeze())
}

/// Where the timeout of the command `args` names is.
fn timeout_of(args: &[&[u8]]) -> Option<Timeout> {
    let name = args.first()?.to_ascii_lowercase();
    let last = args.len().checked_sub(1).filter(|&i| i > 1)?;
    match name.as_slice() {
        b"blpop" | b"brpop" | b"bzpopmin" | b"bzpopmax" | b"brpoplpush" | b"blmove" => {
            Some(Timeout::Seconds { at: last })
        }
        b"blmpop" | b"bzmpop" => Some(Timeout::Seconds { at: 1 }),
        b"xread" => block_option(args, 1),
        // XREADGROUP GROUP group consumer [options] STREAMS ...
        b"xreadgroup" => block_option(args, 4),
        _ => None,
    }
}

/// The argument after XREAD's (or XREADGROUP's) BLOCK, reading the options from `from` up to
/// STREAMS as Redis does (a key or an ID named BLOCK is not the option).
fn block_option(args: &[&[u8]], from: usize) -> Option<Timeout> {
    let mut i = from;
    while let Some(option) = args.get(i) {
        match option.to_ascii_lowercase().as_slice() {
            b"block" => return (i + 1 < args.len()).then_some(Timeout::Millis { at: i + 1 }),
            b"count" => i += 2,
            b"noack" => i += 1,
            _ => return None,
        }
    }
    None
}

/// A timeout in seconds as Redis reads it (a decimal, rounded up to the millisecond).
fn seconds_as_millis(arg: &[u8]) -> Option<u64> {
    let seconds: f64 = std::str::from_utf8(arg).ok()?.trim().parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    let ms = (seconds * 1000.0).ceil();
    (ms < u64::MAX as f64).then_some(ms as u64)
}

fn millis(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request from its arguments, separated by spaces.
    fn frame(line: &str) -> Bytes {
        let mut out = BytesMut::new();
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        Reply(&mut out).command(&args);
        out.freeze()
    }

    fn left(line: &str, waited_ms: u64) -> Option<Bytes> {
        with_time_left(&frame(line), Duration::from_millis(waited_ms))
    }

    #[test]
    fn what_was_waited_comes_off_a_timeout_in_seconds_wherever_the_command_keeps_it() {
        assert_eq!(left("BLPOP a b 10", 2_500), Some(frame("BLPOP a b 7.500")));
        assert_eq!(
            left("blmove a b LEFT RIGHT 0.5", 200),
            Some(frame("blmove a b LEFT RIGHT 0.300"))
        );
        assert_eq!(
            left("BZMPOP 3 1 z MIN", 1_000),
            Some(frame("BZMPOP 2.000 1 z MIN"))
        );
    }

    #[test]
    fn what_was_waited_comes_off_xreads_block_in_milliseconds() {
        assert_eq!(
            left("XREAD COUNT 5 BLOCK 2000 STREAMS s $", 500),
            Some(frame("XREAD COUNT 5 BLOCK 1500 STREAMS s $"))
        );
        // A group named BLOCK is not the option.
        assert_eq!(
            left("XREADGROUP GROUP BLOCK c NOACK BLOCK 900 STREAMS s >", 100),
            Some(frame(
                "XREADGROUP GROUP BLOCK c NOACK BLOCK 800 STREAMS s >"
            ))
        );
        assert_eq!(left("XREAD STREAMS BLOCK 0", 100), None);
    }

    #[test]
    fn a_timeout_that_ran_out_becomes_the_shortest_and_one_of_zero_stays() {
        assert_eq!(left("BRPOP a 1", 5_000), Some(frame("BRPOP a 0.001")));
        assert_eq!(
            left("XREAD BLOCK 10 STREAMS s 0", 50),
            Some(frame("XREAD BLOCK 1 STREAMS s 0"))
        );
        assert_eq!(left("BLPOP a 0", 5_000), Some(frame("BLPOP a 0")));
        assert_eq!(left("BLPOP a 3", 0), Some(frame("BLPOP a 3")));
    }

    #[test]
    fn commands_whose_timeout_cannot_be_found_are_not_rewritten() {
        for line in [
            "WAIT 1 100",
            "GET a",
            "BLPOP a soon",
            "BLPOP a -1",
            "BLPOP a",
        ] {
            assert_eq!(left(line, 50), None, "{line}");
        }
    }
}
