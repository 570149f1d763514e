//! A pool's `deny_commands`: commands its clients may not run, whatever else the policy allows. A
//! denied container (`CONFIG`) denies each of its subcommands; `CONFIG|SET` denies that one alone.

use super::{all, lookup, script, Request, Spec};

/// The denied commands, as a bit per entry of the command table: one test per request.
#[derive(Debug, Clone, Default)]
pub struct Denied {
    bits: Vec<u64>,
}

impl Denied {
    /// The table entries one `deny_commands` item names: the error says why it names none.
    pub fn parse(item: &str) -> Result<Vec<&'static Spec>, String> {
        let (name, sub) = match item.split_once(['|', ' ']) {
            Some((name, sub)) => (name, Some(sub)),
            None => (item, None),
        };
        let spec = lookup(name.as_bytes(), sub.map(str::as_bytes))
            .ok()
            .filter(|spec| sub.is_none() || spec.name.contains('|'))
            .ok_or_else(|| format!("{item:?} is not a Redis command"))?;
        let prefix = format!("{}|", spec.name);
        Ok(std::iter::once(spec)
            .chain(all().iter().filter(|s| s.name.starts_with(&prefix)))
            .collect())
    }

    /// From a pool's config (checked already: an item that names nothing is skipped here).
    pub fn new(items: &[String]) -> Denied {
        let mut denied = Denied::default();
        for spec in items.iter().filter_map(|i| Denied::parse(i).ok()).flatten() {
            let n = usize::from(spec.number);
            if denied.bits.len() <= n / 64 {
                denied.bits.resize(n / 64 + 1, 0);
            }
            denied.bits[n / 64] |= 1 << (n % 64);
        }
        denied
    }

    pub fn is_empty(&self) -> bool {
        self.bits.is_empty()
    }

    fn has(&self, spec: &Spec) -> bool {
        let n = usize::from(spec.number);
        self.bits
            .get(n / 64)
            .is_some_and(|word| word & (1 << (n % 64)) != 0)
    }

    /// The denied command `req` would run, if any: the command itself, or one an EVAL's script text
    /// calls by name.
    pub fn check(&self, req: Request<'_>, spec: &'static Spec) -> Option<&'static str> {
        if self.is_empty() {
            return None;
        }
        if self.has(spec) {
            return Some(spec.name);
        }
        if !matches!(spec.name, "eval" | "eval_ro") {
            return None;
        }
        script::calls(req.arg(1)).flatten().find_map(|name| {
            let spec = lookup(name, None).ok()?;
            self.has(spec).then_some(spec.name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(args: &[&str]) -> (Vec<u8>, Vec<(u32, u32)>) {
        let mut frame = Vec::new();
        let mut spans = Vec::new();
        for a in args {
            let start = frame.len() as u32;
            frame.extend_from_slice(a.as_bytes());
            spans.push((start, frame.len() as u32));
            frame.push(b' ');
        }
        (frame, spans)
    }

    fn denied(denied: &Denied, args: &[&str]) -> Option<&'static str> {
        let (frame, spans) = request(args);
        let req = Request {
            frame: &frame,
            args: &spans,
        };
        let spec = lookup(args[0].as_bytes(), args.get(1).map(|s| s.as_bytes())).unwrap();
        denied.check(req, spec)
    }

    #[test]
    fn commands_subcommands_and_script_calls_are_denied() {
        let d = Denied::new(&["KEYS".into(), "config|set".into(), "FLUSHALL".into()]);
        assert_eq!(denied(&d, &["keys", "*"]), Some("keys"));
        assert_eq!(denied(&d, &["CONFIG", "SET", "a", "b"]), Some("config|set"));
        assert_eq!(denied(&d, &["CONFIG", "GET", "a"]), None);
        assert_eq!(denied(&d, &["GET", "k"]), None);
        let script = "redis.call('get', KEYS[1]); return redis.call('FLUSHALL')";
        assert_eq!(denied(&d, &["EVAL", script, "1", "k"]), Some("flushall"));
        assert_eq!(
            denied(&d, &["EVAL", "return redis.call('get', KEYS[1])", "1", "k"]),
            None
        );

        let all_config = Denied::new(&["config".into()]);
        assert_eq!(
            denied(&all_config, &["CONFIG", "GET", "a"]),
            Some("config|get")
        );
    }

    #[test]
    fn names_that_are_not_commands_are_refused() {
        assert!(Denied::parse("KEYS").is_ok());
        assert!(Denied::parse("NOSUCH").is_err());
        assert!(Denied::parse("CONFIG|NOSUCH").is_err());
        assert!(Denied::parse("GET|X").is_err());
    }
}
