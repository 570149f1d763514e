//! One user from one line of Redis's ACL language (`user app1 on >secret ~app1:* +@all -@dangerous`),
//! with the rules applied left to right as `ACL SETUSER` applies them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU16, Ordering};

use super::{glob, CATEGORIES};
use crate::command::{self, Spec};

/// A key pattern and the access it grants (`~` both, `%R~` reading, `%W~` writing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyPattern {
    pub access: u8,
    /// As written (ACL LIST shows it).
    pub pattern: Box<[u8]>,
    /// As matched.
    pub compiled: glob::Pattern,
}

impl KeyPattern {
    /// Whether it lets `key` be used with `access` (its READ and WRITE bits; others are ignored).
    #[inline]
    fn fits(&self, key: &[u8], access: u8) -> bool {
        let access = access & (super::READ | super::WRITE);
        self.access & access == access && self.compiled.matches(key)
    }
}

/// A user as its rules made it. Passwords are kept only as SHA-256 digests, as Redis keeps them.
#[derive(Debug, Clone)]
pub struct User {
    pub name: Box<str>,
    pub(super) enabled: bool,
    pub(super) nopass: bool,
    pub(super) passwords: Vec<[u8; 32]>,
    /// One bit per command and subcommand, by [`Spec::number`].
    pub(super) commands: Vec<u64>,
    /// `+@all` or `allcommands` is the latest reset of the commands: ACL LIST starts with it.
    pub(super) all_commands: bool,
    /// The command rules since that reset, as given (ACL LIST and GETUSER show them).
    pub(super) command_rules: Vec<Box<str>>,
    pub(super) all_keys: bool,
    pub(super) keys: Vec<KeyPattern>,
    /// The key pattern that matched last, tried first: an application's keys mostly match one.
    hint: Hint,
    pub(super) all_channels: bool,
    pub(super) channels: Vec<Box<[u8]>>,
}

/// An index into a user's key patterns; any value is safe (an index past them tries none).
#[derive(Debug, Default)]
struct Hint(AtomicU16);

impl Clone for Hint {
    fn clone(&self) -> Hint {
        Hint(AtomicU16::new(self.0.load(Ordering::Relaxed)))
    }
}

/// Why a line is not a user: the word that is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub word: String,
    pub why: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "'{}': {}", self.word, self.why)
    }
}

fn error(word: &str, why: impl Into<String>) -> RuleError {
    RuleError {
        word: word.to_string(),
        why: why.into(),
    }
}

impl User {
    /// A user as Redis creates one: off, no password, no keys, channels or commands.
    pub fn new(name: &str) -> User {
        User {
            name: name.into(),
            enabled: false,
            nopass: false,
            passwords: Vec::new(),
            commands: vec![0; command::all().len().div_ceil(64)],
            all_commands: false,
            command_rules: Vec::new(),
            all_keys: false,
            keys: Vec::new(),
            hint: Hint::default(),
            all_channels: false,
            channels: Vec::new(),
        }
    }

    /// `name`, on, with every command, key and channel: with `password`, or none needed.
    pub fn everything(name: &str, password: Option<&str>) -> Result<User, RuleError> {
        let mut user = User::parse_line(&format!("user {name} on ~* &* +@all"))?;
        match password {
            Some(p) => user.apply(&format!(">{p}"))?,
            None => user.apply("nopass")?,
        }
        Ok(user)
    }

    /// Parses `user NAME rule...` (one line of an ACL file).
    pub fn parse_line(line: &str) -> Result<User, RuleError> {
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("user") => {}
            Some(other) => return Err(error(other, "a line starts with 'user'")),
            None => return Err(error("", "the line is empty")),
        }
        let name = words
            .next()
            .ok_or_else(|| error("user", "a user name follows 'user'"))?;
        if name.contains(|c: char| c.is_ascii_control()) {
            return Err(error(name, "a user name has no control characters"));
        }
        let mut user = User::new(name);
        for word in words {
            user.apply(word)?;
        }
        Ok(user)
    }

    /// Applies one rule.
    pub fn apply(&mut self, rule: &str) -> Result<(), RuleError> {
        match rule.to_ascii_lowercase().as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            "allkeys" => self.allow_all_keys(),
            "resetkeys" => {
                self.all_keys = false;
                self.keys.clear();
            }
            "allchannels" => self.allow_all_channels(),
            "resetchannels" => {
                self.all_channels = false;
                self.channels.clear();
            }
            "allcommands" => self.set_all_commands(true),
            "nocommands" => self.set_all_commands(false),
            "reset" => {
                for r in [
                    "resetpass",
                    "resetkeys",
                    "resetchannels",
                    "off",
                    "nocommands",
                ] {
                    self.apply(r)?;
                }
            }
            _ => return self.apply_prefixed(rule),
        }
        Ok(())
    }

    fn apply_prefixed(&mut self, rule: &str) -> Result<(), RuleError> {
        if let Some(password) = rule.strip_prefix('>') {
            self.add_password(super::sha256(password.as_bytes()));
        } else if let Some(hex) = rule.strip_prefix('#') {
            let digest = parse_digest(hex).ok_or_else(|| {
                error(
                    rule,
                    "a '#' password is the SHA-256 of the password in 64 hex digits",
                )
            })?;
            self.add_password(digest);
        } else if let Some(pattern) = rule.strip_prefix('~') {
            self.add_key_pattern(rule, super::READ | super::WRITE, pattern)?;
        } else if let Some(rest) = rule.strip_prefix('%') {
            let (access, pattern) = rest.split_once('~').ok_or_else(|| {
                error(rule, "a '%' key pattern is %R~, %W~ or %RW~ and a pattern")
            })?;
            let access = match access.to_ascii_uppercase().as_str() {
                "R" => super::READ,
                "W" => super::WRITE,
                "RW" | "WR" => super::READ | super::WRITE,
                _ => return Err(error(rule, "a '%' key pattern is %R~, %W~ or %RW~")),
            };
            self.add_key_pattern(rule, access, pattern)?;
        } else if let Some(pattern) = rule.strip_prefix('&') {
            if pattern == "*" {
                self.allow_all_channels();
            } else if !self.all_channels {
                let pattern: Box<[u8]> = pattern.as_bytes().into();
                if !self.channels.contains(&pattern) {
                    self.channels.push(pattern);
                }
            } else {
                return Err(error(rule, "a channel pattern after '&*' (or allchannels) has no effect; 'resetchannels' first"));
            }
        } else if let Some(what) = rule.strip_prefix('+') {
            self.apply_command_rule(rule, what, true)?;
        } else if let Some(what) = rule.strip_prefix('-') {
            self.apply_command_rule(rule, what, false)?;
        } else {
            return Err(error(rule, "not an ACL rule slotline knows (on, off, nopass, >password, #sha256, resetpass, ~pattern, %R~pattern, %W~pattern, allkeys, resetkeys, &pattern, allchannels, resetchannels, +@category, -@category, +command, -command, +command|subcommand, allcommands, nocommands, reset)"));
        }
        Ok(())
    }

    /// A password (its digest) the user logs in with, beside those it has.
    fn add_password(&mut self, digest: [u8; 32]) {
        if !self.passwords.contains(&digest) {
            self.passwords.push(digest);
        }
        self.nopass = false;
    }

    fn add_key_pattern(&mut self, rule: &str, access: u8, pattern: &str) -> Result<(), RuleError> {
        if access == super::READ | super::WRITE && pattern == "*" {
            self.allow_all_keys();
            return Ok(());
        }
        if self.all_keys {
            return Err(error(
                rule,
                "a key pattern after '~*' (or allkeys) has no effect; 'resetkeys' first",
            ));
        }
        let pattern: Box<[u8]> = pattern.as_bytes().into();
        match self.keys.iter_mut().find(|k| k.pattern == pattern) {
            // As Redis: the same pattern again adds to its access.
            Some(known) => known.access |= access,
            None => self.keys.push(KeyPattern {
                access,
                compiled: glob::Pattern::new(&pattern),
                pattern,
            }),
        }
        Ok(())
    }

    fn allow_all_keys(&mut self) {
        self.all_keys = true;
        self.keys.clear();
    }

    fn allow_all_channels(&mut self) {
        self.all_channels = true;
        self.channels.clear();
    }

    fn set_all_commands(&mut self, allowed: bool) {
        self.commands.fill(if allowed { u64::MAX } else { 0 });
        self.all_commands = allowed;
        self.command_rules.clear();
    }

    fn apply_command_rule(&mut self, rule: &str, what: &str, allow: bool) -> Result<(), RuleError> {
        let what = what.to_ascii_lowercase();
        if let Some(category) = what.strip_prefix('@') {
            if category == "all" {
                self.set_all_commands(allow);
                return Ok(());
            }
            let bit = CATEGORIES
                .iter()
                .position(|c| *c == category)
                .ok_or_else(|| error(rule, format!("unknown command category '{category}'")))?;
            self.set_where(allow, |spec| spec.acl & (1 << bit) != 0);
        } else if let Some((container, sub)) = what.split_once('|') {
            let spec = command::lookup(container.as_bytes(), Some(sub.as_bytes()))
                .ok()
                .filter(|spec| spec.name.contains('|'))
                .ok_or_else(|| error(rule, format!("unknown command or subcommand '{what}'")))?;
            self.set_bit(spec, allow);
        } else {
            let spec = command::lookup(what.as_bytes(), None)
                .ok()
                .filter(|spec| !spec.name.contains('|'))
                .ok_or_else(|| error(rule, format!("unknown command '{what}'")))?;
            let prefix = format!("{}|", spec.name);
            let name = spec.name;
            self.set_where(allow, |s| s.name == name || s.name.starts_with(&prefix));
        }
        // A later rule for the same command or category replaces the earlier one in the text.
        let text = format!("{}{}", if allow { '+' } else { '-' }, what);
        self.command_rules.retain(|r| r[1..] != text[1..]);
        self.command_rules.push(text.into());
        Ok(())
    }

    fn set_where(&mut self, allow: bool, selected: impl Fn(&Spec) -> bool) {
        for spec in command::all().iter().filter(|s| selected(s)) {
            self.set_bit(spec, allow);
        }
    }

    fn set_bit(&mut self, spec: &Spec, allow: bool) {
        let (word, bit) = (spec.number as usize / 64, spec.number % 64);
        if let Some(w) = self.commands.get_mut(word) {
            if allow {
                *w |= 1 << bit;
            } else {
                *w &= !(1 << bit);
            }
        }
    }

    /// Whether the user may run `spec`.
    pub(super) fn may_run(&self, spec: &Spec) -> bool {
        let (word, bit) = (spec.number as usize / 64, spec.number % 64);
        self.commands.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Whether a key used with `access` is one of the user's.
    pub(super) fn may_use_key(&self, key: &[u8], access: u8) -> bool {
        self.may_use_key_at_once(key, access) || self.may_use_key_by_search(key, access)
    }

    /// Whether the user has every key, or the pattern the last key matched matches `key` too (a
    /// client's keys tend to match the same one). False says only that the search must answer.
    #[inline]
    pub(super) fn may_use_key_at_once(&self, key: &[u8], access: u8) -> bool {
        let hint = self.hint.0.load(Ordering::Relaxed) as usize;
        self.all_keys || self.keys.get(hint).is_some_and(|k| k.fits(key, access))
    }

    fn may_use_key_by_search(&self, key: &[u8], access: u8) -> bool {
        match self.keys.iter().position(|k| k.fits(key, access)) {
            Some(i) => {
                self.hint.0.store(i as u16, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Whether the user may publish or subscribe to `channel` (a pattern of PSUBSCRIBE's is allowed
    /// only when it is one of the user's patterns, as Redis allows it).
    pub(super) fn may_use_channel(&self, channel: &[u8], is_pattern: bool) -> bool {
        self.all_channels
            || self.channels.iter().any(|c| match is_pattern {
                true => **c == *channel,
                false => glob::matches(c, channel),
            })
    }

    /// Everything allowed: the check per command is skipped.
    pub(super) fn unrestricted(&self) -> bool {
        self.all_keys && self.all_channels && self.commands.iter().all(|w| *w == u64::MAX)
    }

    /// The commands part of ACL LIST: `+@all` or `-@all`, then the rules since.
    pub(super) fn describe_commands(&self) -> String {
        let mut out = String::from(if self.all_commands { "+@all" } else { "-@all" });
        for rule in &self.command_rules {
            out.push(' ');
            out.push_str(rule);
        }
        out
    }

    pub(super) fn describe_keys(&self) -> String {
        if self.all_keys {
            return "~*".into();
        }
        let prefix = |access| match access {
            a if a == super::READ => "%R~",
            a if a == super::WRITE => "%W~",
            _ => "~",
        };
        let patterns = self.keys.iter().map(|k| (prefix(k.access), &k.pattern));
        joined(patterns)
    }

    pub(super) fn describe_channels(&self) -> String {
        if self.all_channels {
            return "&*".into();
        }
        joined(self.channels.iter().map(|c| ("&", c)))
    }

    /// The user as ACL LIST shows it (passwords as their digests).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "user {} {}",
            self.name,
            if self.enabled { "on" } else { "off" }
        );
        if self.nopass {
            out.push_str(" nopass");
        }
        for p in &self.passwords {
            let _ = write!(out, " #{}", hex(p));
        }
        let keys = self.describe_keys();
        if !keys.is_empty() {
            let _ = write!(out, " {keys}");
        }
        let channels = self.describe_channels();
        if !self.all_channels {
            out.push_str(" resetchannels");
        }
        if !channels.is_empty() {
            let _ = write!(out, " {channels}");
        }
        let _ = write!(out, " {}", self.describe_commands());
        out
    }
}

/// `prefix` and pattern, each, separated by spaces.
fn joined<'a>(patterns: impl Iterator<Item = (&'static str, &'a Box<[u8]>)>) -> String {
    let words: Vec<String> = patterns
        .map(|(prefix, p)| format!("{prefix}{}", String::from_utf8_lossy(p)))
        .collect();
    words.join(" ")
}

/// Lower-case hex, as Redis shows password digests.
pub(super) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, sub: Option<&str>) -> &'static Spec {
        command::lookup(name.as_bytes(), sub.map(str::as_bytes)).unwrap()
    }

    #[test]
    fn described_as_redis_lists_them() {
        let app1 = User::parse_line("user app1 on >pw1 ~app1:* &app1:* +@all -@dangerous").unwrap();
        assert_eq!(
            app1.describe(),
            "user app1 on #c592df4a86933b92addc9842402ddf198c638ea9be58916ee6e3734e1e3152f8 ~app1:* resetchannels &app1:* +@all -@dangerous"
        );
        let app2 =
            User::parse_line("user app2 on >pw2 %R~shared:* ~app2:* +@read +@write").unwrap();
        assert_eq!(
            app2.describe(),
            "user app2 on #93915a0a4bf8f634cb1856494dd4304472ad46b9827f541f76b6761c49cc55b0 %R~shared:* ~app2:* resetchannels -@all +@read +@write"
        );
        let default = User::parse_line("user default on nopass ~* &* +@all").unwrap();
        assert_eq!(default.describe(), "user default on nopass ~* &* +@all");
        assert!(default.unrestricted());
        assert!(!app1.unrestricted());
    }

    #[test]
    fn commands_by_category_name_and_subcommand() {
        let app1 = User::parse_line("user app1 on +@all -@dangerous").unwrap();
        assert!(app1.may_run(spec("get", None)));
        assert!(!app1.may_run(spec("flushall", None)));
        assert!(!app1.may_run(spec("config", Some("get"))));
        let cfg = User::parse_line("user ops on -@all +config|get +info").unwrap();
        assert!(cfg.may_run(spec("config", Some("get"))));
        assert!(!cfg.may_run(spec("config", Some("set"))));
        assert!(cfg.may_run(spec("info", None)));
        let all_config = User::parse_line("user ops on +config -config|set").unwrap();
        assert!(all_config.may_run(spec("config", Some("resetstat"))));
        assert!(!all_config.may_run(spec("config", Some("set"))));
        assert_eq!(all_config.describe_commands(), "-@all +config -config|set");
    }

    #[test]
    fn keys_by_pattern_and_access() {
        let app2 = User::parse_line("user app2 on %R~shared:* ~app2:* %W~log:*").unwrap();
        assert!(app2.may_use_key(b"shared:x", super::super::READ));
        assert!(!app2.may_use_key(b"shared:x", super::super::WRITE));
        assert!(app2.may_use_key(b"app2:x", super::super::READ | super::super::WRITE));
        assert!(app2.may_use_key(b"log:x", super::super::WRITE));
        assert!(!app2.may_use_key(b"log:x", super::super::READ));
        // Keys a command neither reads nor writes (EXISTS): any pattern will do, but one must match.
        assert!(app2.may_use_key(b"log:x", 0));
        assert!(!app2.may_use_key(b"other", 0));
    }

    #[test]
    fn mistakes_name_the_word() {
        for (line, word) in [
            ("user app on sanitize-payload", "sanitize-payload"),
            ("user app on +@nosuch", "+@nosuch"),
            ("user app on +nosuchcommand", "+nosuchcommand"),
            ("user app on +get|x", "+get|x"),
            ("user app on #abc", "#abc"),
            ("user app on %X~a", "%X~a"),
            ("user app ~* ~a:*", "~a:*"),
            ("person app on", "person"),
            ("user", "user"),
        ] {
            let err = User::parse_line(line).unwrap_err();
            assert_eq!(err.word, word, "{line}: {err}");
        }
    }

    #[test]
    fn passwords_rotate() {
        let mut user = User::parse_line("user app on >old").unwrap();
        user.apply(">new").unwrap();
        assert_eq!(user.passwords.len(), 2);
        user.apply("resetpass").unwrap();
        assert!(user.passwords.is_empty() && !user.nopass);
        user.apply("#c592df4a86933b92addc9842402ddf198c638ea9be58916ee6e3734e1e3152f8")
            .unwrap();
        assert_eq!(user.passwords[0], super::super::sha256(b"pw1"));
    }
}
