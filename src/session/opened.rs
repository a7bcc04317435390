//! Session cookies this thread opened lately, and what they opened to.
//!
//! Every request of a signed-in browser carries the same sealed session cookie, and
//! opening it (base64, AES-256-GCM, then SHA-256 of the id for the store's key) is the
//! same work each time. Each serving thread remembers the last values it opened, so the
//! next request with the same value skips that work. Whether the session still stands
//! is asked of the store on every request, as before: the memo only knows which id a
//! cookie names, and that never changes.
//!
//! Safe because:
//! - only values that opened are remembered, and a hit needs the presented value to
//!   equal one byte for byte (compared in constant time) under the same cookie name
//!   (bound into the seal), so a forged, altered or renamed value is never a hit;
//! - an entry holds which codec opened it ([`CookieCodec`]'s generation: one per set of
//!   secrets); after a reload changes the secrets every entry is a miss, so cookies
//!   sealed with a removed secret stop opening at once.
//!
//! What it holds is what the requests themselves carried (sealed values and the ids
//! in them), in this process only, as hyper's buffers do; the stores still file
//! sessions by [`SessionKey`] alone.
//!
//! Bounded: [`SLOTS`] entries per thread, each at most the longest sealed value the
//! codec will open. A value's slot comes from its first characters, the base64 of the
//! random nonce it was sealed with, so sessions spread over the slots; a newer value
//! takes its slot's place.
//!
//! [`CookieCodec`]: super::CookieCodec

use std::cell::RefCell;

use aws_lc_rs::constant_time::verify_slices_are_equal;

use super::SessionKey;

/// Entries per thread: a few hundred browsers per serving thread find theirs.
const SLOTS: usize = 512;

struct Entry {
    codec: u64,
    /// The cookie's name, bound into the seal.
    name: Box<str>,
    sealed: Box<str>,
    id: Box<str>,
    key: SessionKey,
}

thread_local! {
    static OPENED: RefCell<Vec<Option<Entry>>> = const { RefCell::new(Vec::new()) };
}

/// What the cookie `name` with the value `sealed` opened to on this thread with the
/// codec of generation `codec`: the session id and its store key.
pub(super) fn recall(codec: u64, name: &str, sealed: &str) -> Option<(String, SessionKey)> {
    OPENED.with_borrow(|slots| {
        let entry = slots.get(slot(sealed))?.as_ref()?;
        let same = entry.codec == codec
            && *entry.name == *name
            && verify_slices_are_equal(entry.sealed.as_bytes(), sealed.as_bytes()).is_ok();
        same.then(|| (entry.id.to_string(), entry.key))
    })
}

/// Remembers that the cookie `name` with the value `sealed` opened to `id` with the
/// codec of generation `codec`.
pub(super) fn remember(codec: u64, name: &str, sealed: &str, id: &str, key: SessionKey) {
    OPENED.with_borrow_mut(|slots| {
        if slots.is_empty() {
            slots.resize_with(SLOTS, || None);
        }
        slots[slot(sealed)] = Some(Entry {
            codec,
            name: name.into(),
            sealed: sealed.into(),
            id: id.into(),
            key,
        });
    })
}

/// FNV-1a of the value's first 16 characters (96 random bits of nonce in a genuine
/// value), reduced to a slot.
fn slot(sealed: &str) -> usize {
    let hash = sealed
        .bytes()
        .take(16)
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recalls_only_the_exact_value_for_the_same_codec() {
        let key = SessionKey::of("id-1");
        remember(7, "_s", "sealed-value-one", "id-1", key);
        assert_eq!(
            recall(7, "_s", "sealed-value-one"),
            Some(("id-1".into(), key))
        );
        assert_eq!(recall(8, "_s", "sealed-value-one"), None, "another codec");
        assert_eq!(recall(7, "_t", "sealed-value-one"), None, "another name");
        assert_eq!(
            recall(7, "_s", "sealed-value-onf"),
            None,
            "one byte changed"
        );
        assert_eq!(recall(7, "_s", "sealed-value-on"), None, "cut short");
        assert_eq!(recall(7, "_s", "sealed-value-one!"), None, "one byte more");
    }

    #[test]
    fn holds_at_most_its_slots() {
        for n in 0..SLOTS * 4 {
            let sealed = format!("{n:016}-sealed");
            remember(
                1,
                "_s",
                &sealed,
                &n.to_string(),
                SessionKey::of(&n.to_string()),
            );
        }
        let held = OPENED.with_borrow(|slots| {
            assert_eq!(slots.len(), SLOTS);
            slots.iter().flatten().count()
        });
        assert!(
            held > SLOTS * 9 / 10,
            "values spread over the slots: {held} held"
        );
        // The newest value is always found.
        let newest = format!("{:016}-sealed", SLOTS * 4 - 1);
        assert!(recall(1, "_s", &newest).is_some());
    }
}
