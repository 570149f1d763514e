//! Redis's glob-style matching (`stringmatchlen` in util.c), which ACL key and channel patterns use:
//! `*`, `?`, `[abc]`, `[^a-z]` and `\` escapes, byte by byte, case-sensitive.

/// A pattern ready to match: most ACL patterns are a literal prefix and one `*` (`app1:*`) or a
/// literal, which a comparison answers; the rest are matched as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// No special byte: the text is the pattern.
    Exact(Box<[u8]>),
    /// Literal bytes, then only `*`s: the text starts with them (and is not empty: `*` alone does
    /// not match an empty text in Redis).
    Prefix(Box<[u8]>),
    /// A prefix of 1 to 8 bytes (`app1:*`, most key patterns): the first 8 bytes of the text,
    /// masked, compared as one word, where a memcmp call costs more than the whole check.
    Word {
        word: u64,
        mask: u64,
        len: u8,
    },
    Glob(Box<[u8]>),
}

impl Pattern {
    pub fn new(pattern: &[u8]) -> Pattern {
        let special = |b: &u8| matches!(b, b'*' | b'?' | b'[' | b'\\');
        let literal = pattern
            .iter()
            .rposition(|b| *b != b'*')
            .map_or(&[][..], |last| &pattern[..=last]);
        if !pattern.iter().any(special) {
            Pattern::Exact(pattern.into())
        } else if !literal.iter().any(special) {
            match literal.len() {
                len @ 1..=8 => {
                    let mut bytes = [0; 8];
                    bytes[..len].copy_from_slice(literal);
                    Pattern::Word {
                        word: u64::from_le_bytes(bytes),
                        mask: u64::MAX >> (8 * (8 - len)),
                        len: len as u8,
                    }
                }
                _ => Pattern::Prefix(literal.into()),
            }
        } else {
            Pattern::Glob(pattern.into())
        }
    }

    #[inline]
    pub fn matches(&self, text: &[u8]) -> bool {
        // The first byte first: most patterns a key is tried against start differently (`app1:*`
        // against `app2:x`), and comparing one byte is cheaper than calling memcmp.
        match self {
            Pattern::Exact(p) => **p == *text,
            Pattern::Prefix(p) => match p.first() {
                Some(first) => text.first() == Some(first) && text.starts_with(p),
                None => !text.is_empty(),
            },
            Pattern::Word { word, mask, len } => match text.first_chunk::<8>() {
                Some(head) => u64::from_le_bytes(*head) & mask == *word,
                None => text.starts_with(&word.to_le_bytes()[..usize::from(*len)]),
            },
            Pattern::Glob(p) => matches(p, text),
        }
    }
}

/// Whether `text` matches `pattern`, as Redis matches them.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let mut skip_longer = false;
    match_from(pattern, text, &mut skip_longer, 0)
}

/// Redis bounds the recursion `*` causes; past it a pattern matches nothing.
const MAX_NESTING: u32 = 1000;

fn match_from(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    // As Redis's loop, which runs while both have bytes left: `*` does not match an empty text.
    while let Some(&c) = p.first() {
        if s.is_empty() {
            break;
        }
        match c {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_from(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        // A longer text cannot match where a shorter one failed at its end.
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let not = p.first() == Some(&b'^');
                if not {
                    p = &p[1..];
                }
                let mut hit = false;
                loop {
                    match p {
                        [b'\\', e, ..] => {
                            hit |= *e == s[0];
                            p = &p[2..];
                        }
                        [b']', ..] => break,
                        [] => {
                            // An unterminated class: Redis steps back onto the last byte.
                            p = b"]";
                            break;
                        }
                        [a, b'-', b, ..] => {
                            let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                            hit |= (lo..=hi).contains(&s[0]);
                            p = &p[3..];
                        }
                        [a, ..] => {
                            hit |= *a == s[0];
                            p = &p[1..];
                        }
                    }
                }
                if hit == not {
                    return false;
                }
                s = &s[1..];
            }
            b'\\' if p.len() >= 2 => {
                if p[1] != s[0] {
                    return false;
                }
                p = &p[1..];
                s = &s[1..];
            }
            _ => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn as_redis_matches() {
        for (pattern, text, expected) in [
            ("*", "", false),
            ("*", "anything", true),
            ("app1:*", "app1:x", true),
            ("app1:*", "app1:", true),
            ("app1:*", "app2:x", false),
            ("app1:*", "app1", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("h[ae]llo", "hello", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hello", false),
            ("h[^e]llo", "hallo", true),
            ("h[a-c]llo", "hbllo", true),
            ("h[c-a]llo", "hbllo", true),
            ("h[a-c]llo", "hdllo", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*:*:*", "a:b:c", true),
            ("*:*:*", "a:b", false),
            ("", "", true),
            ("", "a", false),
            ("a**", "a", true),
            ("[", "[", false),
            ("h[ab", "hb", true),
        ] {
            assert_eq!(
                matches(pattern.as_bytes(), text.as_bytes()),
                expected,
                "{pattern:?} against {text:?}"
            );
        }
    }

    #[test]
    fn compiled_patterns_match_as_redis_does() {
        use super::Pattern;
        assert!(matches!(
            Pattern::new(b"app1:*"),
            Pattern::Word { len: 5, .. }
        ));
        assert!(matches!(Pattern::new(b"tenant-17:*"), Pattern::Prefix(_)));
        assert!(matches!(Pattern::new(b"app1:x"), Pattern::Exact(_)));
        assert!(matches!(Pattern::new(b"a*b"), Pattern::Glob(_)));
        let patterns = [
            "*",
            "**",
            "app1:*",
            "app1:**",
            "app1",
            "",
            "a*b",
            "h[ae]llo",
            "a?",
            "x\\*",
            "12345678*",
            "1234567*",
            "123456789*",
            "a*",
        ];
        let texts = [
            "",
            "a",
            "app1",
            "app1:",
            "app1:x",
            "app2:x",
            "ab",
            "hello",
            "x*",
            "axb",
            "1234567",
            "12345678",
            "123456789",
            "12345679",
            "app1:xyzw",
            "app2:xyzw",
            "1234567\u{0}",
        ];
        for p in patterns {
            for t in texts {
                assert_eq!(
                    Pattern::new(p.as_bytes()).matches(t.as_bytes()),
                    matches(p.as_bytes(), t.as_bytes()),
                    "{p:?} against {t:?}"
                );
            }
        }
    }

    #[test]
    fn stars_do_not_explode() {
        let pattern = "*a".repeat(30) + "b";
        let text = "a".repeat(60);
        assert!(!matches(pattern.as_bytes(), text.as_bytes()));
    }
}
