//! The logins a client's requests may run as on the nodes, besides the pool's own: the
//! `backend_users` of the config, fixed at start, and with `node_logins` the node users clients
//! logged in as, added as each first succeeds. A login's index is what [`super::Via::login`]
//! carries; every node of the pool keeps a twin per login, started when a client first needs it.

use std::sync::{Mutex, PoisonError};

use super::Handshake;

/// Distinct node users (with their passwords) a pool with `node_logins` logs in as at most. Each
/// has its own connections to every node, and its own label in nothing: a bound on both.
pub const NODE_LOGINS: usize = 64;

/// A node login, with the user and the digest of the password that made it.
type Added = (Box<[u8]>, [u8; 32], Handshake);

#[derive(Debug, Default)]
pub struct Logins {
    fixed: Box<[Handshake]>,
    /// Node logins added so far.
    added: Mutex<Vec<Added>>,
    /// How many may be added (0 without `node_logins`).
    room: usize,
    /// The database each connection is switched to.
    db: u32,
}

impl Logins {
    pub fn new(fixed: Box<[Handshake]>, room: usize, db: u32) -> Logins {
        Logins {
            fixed,
            added: Mutex::default(),
            room,
            db,
        }
    }

    /// How many logins there may ever be: the size of each node's twins.
    pub fn slots(&self) -> usize {
        self.fixed.len() + self.room
    }

    /// The handshake of login `index`.
    pub fn get(&self, index: u16) -> Option<Handshake> {
        let index = usize::from(index);
        if let Some(fixed) = self.fixed.get(index) {
            return Some(fixed.clone());
        }
        let added = self.added.lock().unwrap_or_else(PoisonError::into_inner);
        added
            .get(index - self.fixed.len())
            .map(|(_, _, handshake)| handshake.clone())
    }

    /// The login of node user `user` with `password`, which a node has just accepted: the one
    /// added before for the same pair, or a new one; None when [`NODE_LOGINS`] are taken.
    pub fn add(&self, user: &[u8], password: &[u8]) -> Option<u16> {
        let digest = crate::acl::sha256(password);
        let mut added = self.added.lock().unwrap_or_else(PoisonError::into_inner);
        let at = match added
            .iter()
            .position(|(u, d, _)| **u == *user && crate::acl::same_secret(d, &digest))
        {
            Some(at) => at,
            None if added.len() < self.room => {
                let handshake = Handshake::node_login(user, password, self.db);
                added.push((user.into(), digest, handshake));
                added.len() - 1
            }
            None => return None,
        };
        u16::try_from(self.fixed.len() + at).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_logins_are_shared_per_user_and_password_and_bounded() {
        let fixed: Box<[Handshake]> = vec![Handshake::node_login(b"b1", b"p1", 0)].into();
        let logins = Logins::new(fixed, 2, 0);
        assert_eq!(logins.slots(), 3);
        assert_eq!(logins.add(b"bob", b"123"), Some(1));
        assert_eq!(logins.add(b"bob", b"123"), Some(1), "the same login again");
        assert_eq!(logins.add(b"bob", b"456"), Some(2), "another password");
        assert_eq!(logins.add(b"eve", b"1"), None, "full");
        let frames = |i| logins.get(i).map(|h| h.frames);
        assert_eq!(
            frames(1).as_deref(),
            Some(&b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$3\r\n123\r\n"[..])
        );
        assert!(frames(3).is_none());
        assert!(Logins::default().add(b"bob", b"123").is_none());
    }
}
