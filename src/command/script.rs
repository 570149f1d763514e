//! What a Lua script's text says about the commands it runs: every `redis.call(...)` /
//! `redis.pcall(...)` (and `server.` ...) whose command is a string literal. A name held in a variable,
//! or `redis.call` passed around, is not seen: the callers treat that as "could be anything".

/// The commands a script calls, in order: `Some(name)` for a literal, `None` for a call whose command
/// the text does not show.
pub fn calls(script: &[u8]) -> Calls<'_> {
    Calls { rest: script }
}

pub struct Calls<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Calls<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = find_call(self.rest)?;
        let after = self.rest[at..].trim_ascii_start();
        let after = after.strip_prefix(b"(").unwrap_or(after).trim_ascii_start();
        let literal = after
            .split_first()
            .filter(|(&quote, _)| quote == b'\'' || quote == b'"')
            .and_then(|(&quote, name)| Some((name, name.iter().position(|&b| b == quote)?)));
        match literal {
            Some((name, end)) => {
                self.rest = &name[end..];
                Some(Some(&name[..end]))
            }
            None => {
                self.rest = after;
                Some(None)
            }
        }
    }
}

/// Where the arguments of the next `.call` or `.pcall` in `script` begin.
fn find_call(script: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(dot) = script[from..].iter().position(|&b| b == b'.') {
        let name = &script[from + dot + 1..];
        let len = if name.starts_with(b"call") {
            4
        } else if name.starts_with(b"pcall") {
            5
        } else {
            from += dot + 1;
            continue;
        };
        // `.caller` or `.calls` are other names.
        match name.get(len) {
            Some(b) if b.is_ascii_alphanumeric() || *b == b'_' => from += dot + 1,
            _ => return Some(from + dot + 1 + len),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_dynamic_calls_are_told_apart() {
        let script =
            b"local c = 'get'; redis.call('SET', KEYS[1], 1); redis.pcall(\"del\", KEYS[2]); \
                       server.call(c, KEYS[1]); x.caller('flushall')";
        let found: Vec<_> = calls(script).collect();
        assert_eq!(found, vec![Some(&b"SET"[..]), Some(&b"del"[..]), None]);
        assert_eq!(calls(b"return 1").count(), 0);
        // An unterminated literal is a call the text does not show.
        assert_eq!(calls(b"redis.call('get").collect::<Vec<_>>(), vec![None]);
    }
}
