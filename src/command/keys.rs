//! Finding a command's keys from its key specs, the way Redis's `getKeysUsingKeySpecs` does.

use super::spec::{key_access, Begin, Find, Spec};

/// Calls `found` with the argument index of every key of the command, in order.
///
/// `arg(i)` returns argument `i` (0 is the command name). Arguments that a malformed command lacks are
/// skipped, as Redis does for variadic commands: the server then answers with its own syntax error.
pub fn for_each_key<'a>(
    spec: &Spec,
    argc: usize,
    arg: impl Fn(usize) -> &'a [u8],
    mut found: impl FnMut(usize),
) {
    for_each_key_access(spec, argc, arg, |i, _| found(i))
}

/// [`for_each_key`], with how the command uses each key ([`key_access`] bits), for ACL checks.
pub fn for_each_key_access<'a>(
    spec: &Spec,
    argc: usize,
    arg: impl Fn(usize) -> &'a [u8],
    mut found: impl FnMut(usize, u8),
) {
    // Most commands name one key at a fixed place (GET, SET, HGET ...): found without the search.
    if let Some((at, access)) = spec.one_key {
        let at = usize::from(at);
        if at < argc {
            found(at, access);
        }
        return;
    }
    let argc_i = argc as i64;
    let mut searched_by_hand = false;
    for ks in spec.keys {
        let first = match ks.begin {
            Begin::Index(i) => i as i64,
            Begin::Keyword {
                keyword,
                start_from,
            } => {
                let (start, end, step) = if start_from > 0 {
                    (start_from as i64, argc_i - 1, 1)
                } else {
                    (argc_i + start_from as i64, 0, -1)
                };
                let mut i = start;
                let mut at = None;
                while (step > 0 && i <= end) || (step < 0 && i >= end) {
                    if i < 1 || i >= argc_i {
                        break;
                    }
                    if arg(i as usize).eq_ignore_ascii_case(keyword.as_bytes()) {
                        at = Some(i + 1);
                        break;
                    }
                    i += step;
                }
                match at {
                    Some(i) => i,
                    None => continue,
                }
            }
            Begin::Unknown => {
                // Several specs may be unknown (SORT has two); the hand-written search finds them all.
                if !searched_by_hand {
                    searched_by_hand = true;
                    unknown_keys(spec, argc, &arg, &mut |i| found(i, key_access::WRITE));
                }
                continue;
            }
        };
        if first >= argc_i {
            continue;
        }
        let (first, last, step) = match ks.find {
            Find::Range {
                last_key,
                step,
                limit,
            } => {
                let last = if last_key >= 0 {
                    first + last_key as i64
                } else if limit <= 1 {
                    argc_i + last_key as i64
                } else {
                    first + ((argc_i - first) / limit as i64 + last_key as i64)
                };
                (first, last, step.max(1) as i64)
            }
            Find::KeyNum {
                keynum_idx,
                first_key,
                step,
            } => {
                let at = first + keynum_idx as i64;
                if at >= argc_i {
                    continue;
                }
                let Some(numkeys) =
                    crate::protocol::parse_int(arg(at as usize)).filter(|n| *n >= 0)
                else {
                    continue;
                };
                let first = first + first_key as i64;
                (first, first + numkeys - 1, step.max(1) as i64)
            }
            Find::Unknown => continue,
        };
        let mut i = first;
        while i <= last && i < argc_i {
            found(i as usize, ks.access);
            i += step;
        }
    }
}

/// Commands whose keys Redis finds with hand-written code rather than key specs.
fn unknown_keys<'a>(
    spec: &Spec,
    argc: usize,
    arg: &impl Fn(usize) -> &'a [u8],
    found: &mut impl FnMut(usize),
) {
    if spec.name != "sort" && spec.name != "sort_ro" {
        return;
    }
    // SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA] [STORE dest]:
    // only STORE names a key (written); patterns are not keys slotline can route.
    let mut i = 2;
    while i < argc {
        let a = arg(i);
        if a.eq_ignore_ascii_case(b"LIMIT") {
            i += 3;
        } else if a.eq_ignore_ascii_case(b"BY") || a.eq_ignore_ascii_case(b"GET") {
            i += 2;
        } else if a.eq_ignore_ascii_case(b"STORE") && i + 1 < argc {
            found(i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lookup;

    fn keys(cmd: &str) -> Vec<String> {
        let args: Vec<&str> = cmd.split(' ').collect();
        let spec = lookup(args[0].as_bytes(), args.get(1).map(|s| s.as_bytes())).unwrap();
        let mut out = Vec::new();
        super::for_each_key(
            spec,
            args.len(),
            |i| args[i].as_bytes(),
            |i| out.push(args[i].to_string()),
        );
        out
    }

    #[test]
    fn fixed_positions() {
        assert_eq!(keys("GET a"), ["a"]);
        assert_eq!(keys("MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(keys("MGET a b c"), ["a", "b", "c"]);
        assert_eq!(keys("OBJECT ENCODING a"), ["a"]);
        assert_eq!(keys("LMOVE a b LEFT RIGHT"), ["a", "b"]);
    }

    #[test]
    fn counted_and_keyword_keys() {
        assert_eq!(keys("EVAL s 2 a b x y"), ["a", "b"]);
        assert_eq!(keys("EVAL s 0 x"), Vec::<String>::new());
        assert_eq!(keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2"), ["d", "a", "b"]);
        assert_eq!(keys("XREAD COUNT 2 STREAMS a b 0 0"), ["a", "b"]);
        assert_eq!(keys("XREADGROUP GROUP g c STREAMS a >"), ["a"]);
        assert_eq!(keys("SORT a BY w LIMIT 0 5 GET x STORE d"), ["a", "d"]);
        assert_eq!(keys("GEORADIUS a 0 0 1 km STORE d"), ["a", "d"]);
        // More keys announced than given: keep what is there, the server reports the error.
        assert_eq!(keys("EVAL s 5 a"), ["a"]);
        assert_eq!(keys("EVAL s x a"), Vec::<String>::new());
    }
}
