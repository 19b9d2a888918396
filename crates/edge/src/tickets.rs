//! TLS session tickets sealed with keys the edge is given, so that a ticket one node issued
//! resumes on every node that holds the same keys.
//!
//! The edge knows nothing of where keys come from: [`TicketKeys`] starts with a random key of its
//! own (a single node resumes its own tickets), and whoever runs the edge replaces the keys with
//! [`TicketKeys::set`] — the binary does with the keys its fleet shares through the store.
//!
//! A ticket is `key id (8 bytes) || nonce (12 bytes, random) || ciphertext || tag (16 bytes)`,
//! sealed with AES-256-GCM-SIV (aws-lc-rs, rustls' own provider) and the key id as additional
//! data. GCM-SIV rather than GCM because every node of a fleet encrypts with the same key and
//! random nonces: a repeated nonce under GCM-SIV only shows that two tickets are equal, where
//! under GCM it would give away the authentication key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::server::ProducesTickets;

use crate::error::EdgeError;

/// Bytes of the key id at the start of every ticket.
pub const TICKET_KEY_ID_LEN: usize = 8;
/// Bytes of a ticket key's secret (AES-256).
pub const TICKET_SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = TICKET_KEY_ID_LEN + NONCE_LEN;
/// Longest ticket worth trying to open. rustls' session state without client certificates (the
/// edge asks for none) is a few hundred bytes; anything far longer is not one of ours and is
/// refused before any work.
const MAX_TICKET_LEN: usize = 4096;
/// The lifetime clients are told until [`TicketKeys::set_lifetime`] says otherwise: 12 hours,
/// as rustls' own ticketer.
const DEFAULT_LIFETIME: u32 = 12 * 60 * 60;
/// TLS 1.3 caps a ticket's lifetime at 7 days (RFC 8446 section 4.6.1).
const MAX_LIFETIME: u32 = 7 * 24 * 60 * 60;

/// One ticket key: the id written in each ticket it seals, and its secret. `Debug` shows the id
/// only.
#[derive(Clone)]
pub struct TicketKey {
    id: [u8; TICKET_KEY_ID_LEN],
    secret: [u8; TICKET_SECRET_LEN],
    aead: Arc<LessSafeKey>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &hex(&self.id))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl PartialEq for TicketKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.secret == other.secret
    }
}

impl Eq for TicketKey {}

impl TicketKey {
    /// The key with this id and secret (as stored by whoever shares it).
    pub fn new(
        id: [u8; TICKET_KEY_ID_LEN],
        secret: [u8; TICKET_SECRET_LEN],
    ) -> Result<TicketKey, EdgeError> {
        let unbound = UnboundKey::new(&AES_256_GCM_SIV, &secret)
            .map_err(|_| EdgeError::TicketKey("AES-256-GCM-SIV refused the key"))?;
        Ok(TicketKey {
            id,
            secret,
            aead: Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// A new key: random id and secret from the system's secure generator.
    pub fn generate() -> Result<TicketKey, EdgeError> {
        let mut id = [0u8; TICKET_KEY_ID_LEN];
        let mut secret = [0u8; TICKET_SECRET_LEN];
        aws_lc_rs::rand::fill(&mut id)
            .and_then(|()| aws_lc_rs::rand::fill(&mut secret))
            .map_err(|_| EdgeError::TicketKey("the system's random generator failed"))?;
        TicketKey::new(id, secret)
    }

    /// The id every ticket sealed with this key starts with.
    pub fn id(&self) -> [u8; TICKET_KEY_ID_LEN] {
        self.id
    }

    /// The id in lowercase hex, for logs.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// The secret, for storing the key where the other nodes find it.
    pub fn secret(&self) -> &[u8; TICKET_SECRET_LEN] {
        &self.secret
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&self.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = self
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&self.id),
                &mut ticket[HEADER_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    /// Opens `rest` (the ticket after the key id, which the caller matched to this key).
    fn open(&self, rest: &[u8]) -> Option<Vec<u8>> {
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        if sealed.len() < TAG_LEN {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain_len = self
            .aead
            .open_in_place(nonce, Aad::from(&self.id), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

/// The keys in force: one seals new tickets, all of them open tickets.
#[derive(Debug)]
struct KeySet {
    current: TicketKey,
    /// Keys that only open tickets (the previous one, the next one), a handful at most.
    others: Vec<TicketKey>,
}

impl KeySet {
    fn find(&self, id: &[u8]) -> Option<&TicketKey> {
        std::iter::once(&self.current)
            .chain(&self.others)
            .find(|key| key.id[..] == *id)
    }
}

/// rustls' ticketer for the edge: seals with the current key, opens with any key it holds (found
/// by the id at the start of the ticket). Keys are swapped in live with [`TicketKeys::set`]; a
/// handshake in progress uses the set it loaded.
///
/// Tickets are attacker-controlled input: every malformed, unknown or tampered ticket is `None`
/// (a full handshake), never a panic.
#[derive(Debug)]
pub struct TicketKeys {
    keys: ArcSwap<KeySet>,
    lifetime: AtomicU32,
}

impl TicketKeys {
    /// Tickets under a random key of this process's own, until [`TicketKeys::set`] replaces it.
    pub fn new() -> Result<TicketKeys, EdgeError> {
        Ok(TicketKeys::with(TicketKey::generate()?, Vec::new()))
    }

    /// Tickets sealed with `current`, opened with `current` or any of `others`.
    pub fn with(current: TicketKey, others: Vec<TicketKey>) -> TicketKeys {
        TicketKeys {
            keys: ArcSwap::from_pointee(KeySet { current, others }),
            lifetime: AtomicU32::new(DEFAULT_LIFETIME),
        }
    }

    /// From now on, seal with `current` and open with `current` or any of `others` (the previous
    /// key, the next one); every other key is forgotten, and its tickets no longer resume.
    pub fn set(&self, current: TicketKey, others: Vec<TicketKey>) {
        self.keys.store(Arc::new(KeySet { current, others }));
    }

    /// The key sealing new tickets.
    pub fn current(&self) -> TicketKey {
        self.keys.load().current.clone()
    }

    /// The lifetime clients are told a ticket has (default 12 h; at most 7 days, TLS 1.3's
    /// limit). It should not exceed how long the keys that seal tickets now are kept.
    pub fn set_lifetime(&self, lifetime: Duration) {
        let secs = u32::try_from(lifetime.as_secs())
            .unwrap_or(MAX_LIFETIME)
            .clamp(1, MAX_LIFETIME);
        self.lifetime.store(secs, Ordering::Relaxed);
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime.load(Ordering::Relaxed)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.load().current.seal(plain)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at_checked(TICKET_KEY_ID_LEN)?;
        self.keys.load().find(id)?.open(rest)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys() -> (TicketKeys, TicketKey, TicketKey) {
        let (a, b) = (
            TicketKey::generate().unwrap(),
            TicketKey::generate().unwrap(),
        );
        (TicketKeys::with(a.clone(), vec![b.clone()]), a, b)
    }

    #[test]
    fn round_trip_and_key_id_in_front() {
        let (keys, current, _) = keys();
        let ticket = keys.encrypt(b"session state").unwrap();
        assert_eq!(ticket[..TICKET_KEY_ID_LEN], current.id());
        assert_eq!(ticket.len(), HEADER_LEN + 13 + TAG_LEN);
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        // Random nonces: the same state never gives the same ticket.
        assert_ne!(keys.encrypt(b"session state").unwrap(), ticket);
        assert_eq!(keys.decrypt(&keys.encrypt(b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn opens_with_every_key_held_and_only_those() {
        let (a, b) = (
            TicketKey::generate().unwrap(),
            TicketKey::generate().unwrap(),
        );
        let old = TicketKeys::with(a.clone(), vec![]);
        let ticket = old.encrypt(b"made under a").unwrap();
        // Rotated: b seals, a still opens.
        let rotated = TicketKeys::with(b.clone(), vec![a.clone()]);
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"made under a");
        // Live swap: a forgotten key's tickets no longer open.
        rotated.set(TicketKey::generate().unwrap(), vec![b]);
        assert_eq!(rotated.decrypt(&ticket), None);
    }

    #[test]
    fn unknown_key_id_is_none() {
        let (keys, _, _) = keys();
        let stranger = TicketKeys::new().unwrap();
        assert_eq!(keys.decrypt(&stranger.encrypt(b"x").unwrap()), None);
    }

    #[test]
    fn same_id_other_secret_is_none() {
        let (keys, current, _) = keys();
        let impostor = TicketKeys::with(TicketKey::new(current.id(), [7; 32]).unwrap(), vec![]);
        assert_eq!(keys.decrypt(&impostor.encrypt(b"x").unwrap()), None);
    }

    #[test]
    fn tampered_tickets_are_none() {
        let (keys, _, _) = keys();
        let ticket = keys.encrypt(b"session state").unwrap();
        for i in TICKET_KEY_ID_LEN..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert_eq!(keys.decrypt(&bad), None, "byte {i} flipped");
        }
        let mut longer = ticket.clone();
        longer.push(0);
        assert_eq!(keys.decrypt(&longer), None);
    }

    #[test]
    fn short_empty_and_huge_inputs_are_none() {
        let (keys, current, _) = keys();
        let ticket = keys.encrypt(b"state").unwrap();
        for len in 0..ticket.len() {
            assert_eq!(keys.decrypt(&ticket[..len]), None, "first {len} bytes");
        }
        let mut huge = current.id().to_vec();
        huge.resize(MAX_TICKET_LEN + 1, 0);
        assert_eq!(keys.decrypt(&huge), None);
    }

    #[test]
    fn lifetime_is_clamped() {
        let (keys, _, _) = keys();
        assert_eq!(keys.lifetime(), 12 * 3600);
        keys.set_lifetime(Duration::from_secs(3600));
        assert_eq!(keys.lifetime(), 3600);
        keys.set_lifetime(Duration::from_secs(30 * 86_400));
        assert_eq!(keys.lifetime(), 7 * 86_400);
        keys.set_lifetime(Duration::ZERO);
        assert_eq!(keys.lifetime(), 1);
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = TicketKey::new([0xab; 8], [0x5a; 32]).unwrap();
        let text = format!("{key:?}");
        assert!(text.contains("abababababababab"), "{text}");
        assert!(!text.contains("5a5a") && !text.contains("90, 90"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tickets_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let (keys, current, _) = keys();
            proptest::prop_assert_eq!(keys.decrypt(&bytes), None);
            // The same bytes behind a known key id: still nothing opens.
            let mut known = current.id().to_vec();
            known.extend_from_slice(&bytes);
            proptest::prop_assert_eq!(keys.decrypt(&known), None);
        }
    }
}
