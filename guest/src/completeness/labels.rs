//! Bounded tables of label pairs (queue: system + destination; root type: service + name) that
//! become metric labels on the host: each distinct pair gets a small id, looked up without
//! allocating, up to a maximum beyond which pairs share the [`OVERFLOW_LABEL`] id.

use core::hash::{Hash, Hasher};

use hashbrown::{Equivalent, HashMap};

/// Label values of the pair that collects the pairs beyond a table's maximum.
pub const OVERFLOW_LABEL: &str = "_overflow";
/// Longest label value kept, in bytes; longer values are cut at a character boundary.
pub const MAX_LABEL_LEN: usize = 256;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A borrowed pair that hashes like the owned `(String, String)` key, for lookups without
/// allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PairRef<'a>(&'a str, &'a str);

impl Hash for PairRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // `(String, String)` hashes its two `str`s in order, as this tuple does.
        (self.0, self.1).hash(state);
    }
}

impl Equivalent<(String, String)> for PairRef<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// Ids of label pairs, at most `max` distinct ones plus the overflow pair.
#[derive(Debug)]
pub struct Interner {
    ids: HashMap<(String, String), usize>,
    max: usize,
}

impl Interner {
    /// An empty table of at most `max` pairs (and the overflow pair).
    pub fn new(max: usize) -> Self {
        Interner {
            ids: HashMap::new(),
            max,
        }
    }

    /// The id of the pair (`a`, `b`), each cut to [`MAX_LABEL_LEN`]. A new pair gets the next
    /// id (the number of ids so far) and `new` is called with it; once `max` pairs exist, new
    /// pairs get the id of ([`OVERFLOW_LABEL`], [`OVERFLOW_LABEL`]).
    pub fn id(&mut self, a: &str, b: &str, mut new: impl FnMut(&str, &str)) -> usize {
        let (a, b) = (cut(a, MAX_LABEL_LEN), cut(b, MAX_LABEL_LEN));
        if let Some(&id) = self.ids.get(&PairRef(a, b)) {
            return id;
        }
        let (a, b) = if self.ids.len() < self.max {
            (a, b)
        } else {
            (OVERFLOW_LABEL, OVERFLOW_LABEL)
        };
        if let Some(&id) = self.ids.get(&PairRef(a, b)) {
            return id;
        }
        let id = self.ids.len();
        new(a, b);
        self.ids.insert((a.to_owned(), b.to_owned()), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_bounded() {
        let mut t = Interner::new(2);
        let mut created = Vec::new();
        let mut id =
            |a: &str, b: &str| t.id(a, b, |x, y| created.push((x.to_owned(), y.to_owned())));
        assert_eq!(id("rabbitmq", "orders"), 0);
        assert_eq!(id("kafka", "orders"), 1);
        assert_eq!(id("rabbitmq", "orders"), 0);
        // The pair ("ab", "c") is not ("a", "bc").
        assert_eq!(id("nats", "x"), 2);
        assert_eq!(id("nats", "y"), 2);
        assert_eq!(created.len(), 3);
        assert_eq!(
            created[2],
            (OVERFLOW_LABEL.to_owned(), OVERFLOW_LABEL.to_owned())
        );
        let mut u = Interner::new(10);
        assert_ne!(u.id("ab", "c", |_, _| {}), u.id("a", "bc", |_, _| {}));
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        assert_eq!(cut(&"x".repeat(300), MAX_LABEL_LEN).len(), MAX_LABEL_LEN);
        let wide = "é".repeat(MAX_LABEL_LEN);
        let c = cut(&wide, MAX_LABEL_LEN);
        assert!(c.len() <= MAX_LABEL_LEN && c.chars().all(|ch| ch == 'é'));
        assert_eq!(cut("short", MAX_LABEL_LEN), "short");
    }
}
