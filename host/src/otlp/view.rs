//! Builds span-view batches (the `tracekeeper-abi` layout) from encoded spans.
//!
//! Only what the guest's interest names is extracted: attribute values are looked up by key in
//! the encoded `KeyValue`s and copied into the batch; everything else stays in the span bytes.
//! The receivers' requests have their span attributes looked up while the wire walk checks them
//! ([`Pick`]), so only spans with links or events are walked again here.

use std::sync::Arc;

use hashbrown::HashMap;
use tracekeeper_abi::{BatchWriter, MAX_VALUE_DEPTH, Section, SpanFixed, SpanId, TraceId};

use super::request::{Group, SpanInfo, span_field as sf};
use super::wire::{Fields, short_key_value, short_string_value};

/// Attribute keys by index, with a filter on their lengths that rejects most other keys
/// without hashing them.
#[derive(Debug, Clone, Default)]
struct Keys {
    map: HashMap<Vec<u8>, u16>,
    /// Bit `min(len, 63)` is set for the length of every key in `map`.
    lengths: u64,
}

impl Keys {
    fn new(keys: &[String]) -> Self {
        let map: HashMap<Vec<u8>, u16> = keys
            .iter()
            .take(usize::from(tracekeeper_abi::KEY_INLINE))
            .enumerate()
            .map(|(i, k)| (k.as_bytes().to_vec(), i as u16))
            .collect();
        let lengths = map.keys().fold(0, |m, k| m | Self::length_bit(k));
        Keys { map, lengths }
    }

    fn length_bit(key: &[u8]) -> u64 {
        1 << key.len().min(63)
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    #[inline]
    fn get(&self, key: &[u8]) -> Option<u16> {
        if self.lengths & Self::length_bit(key) == 0 {
            return None;
        }
        self.map.get(key).copied()
    }
}

/// What the guest asked for, in a form fast to look up.
#[derive(Debug, Clone, Default)]
pub struct Interest {
    span_keys: Keys,
    resource_keys: Keys,
    all_span_attributes: bool,
    all_resource_attributes: bool,
    links: bool,
    events: bool,
}

impl Interest {
    /// Builds the lookup tables; key lists longer than 65 535 entries are cut (0xFFFF marks an
    /// inline key).
    pub fn new(
        span_attributes: &[String],
        resource_attributes: &[String],
        all_span_attributes: bool,
        all_resource_attributes: bool,
        links: bool,
        events: bool,
    ) -> Self {
        Interest {
            span_keys: Keys::new(span_attributes),
            resource_keys: Keys::new(resource_attributes),
            all_span_attributes,
            all_resource_attributes,
            links,
            events,
        }
    }

    /// True when the guest asked for span links.
    pub fn wants_links(&self) -> bool {
        self.links
    }

    fn wants_span_attributes(&self) -> bool {
        self.all_span_attributes || !self.span_keys.is_empty()
    }
}

/// A span attribute the interest selects, found by the wire walk that checks the request
/// ([`crate::otlp::request::parse_request_with`]), so the view builder need not walk the span's
/// attributes again.
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    /// The key's index in the interest's list; `None` writes the key inline (every span
    /// attribute wanted).
    index: Option<u16>,
    key: &'a [u8],
    /// The encoded `AnyValue`.
    value: &'a [u8],
}

impl Interest {
    /// Adds a span attribute (`kv`, an encoded `KeyValue` the wire walk has checked; `split`,
    /// its key and value if the walk read them) to `out` if this interest selects it.
    #[inline]
    pub fn pick<'a>(
        &self,
        kv: &'a [u8],
        split: Option<(&'a [u8], &'a [u8])>,
        out: &mut Vec<Pick<'a>>,
    ) {
        if !self.wants_span_attributes() {
            return;
        }
        let (key, value) = split.unwrap_or_else(|| split_key_value(kv));
        let index = if self.all_span_attributes {
            None
        } else {
            match self.span_keys.get(key) {
                Some(i) => Some(i),
                None => return,
            }
        };
        out.push(Pick { index, key, value });
    }
}

/// Accumulates span views for one guest call.
#[derive(Debug, Default)]
pub struct ViewBuilder {
    writer: BatchWriter,
    /// Resource record index written for each group pointer seen in this batch.
    resources: HashMap<usize, u32>,
}

impl ViewBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of spans added.
    pub fn span_count(&self) -> usize {
        self.writer.span_count()
    }

    /// The batch bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.writer.as_bytes()
    }

    /// Finishes the batch.
    pub fn into_bytes(self) -> Vec<u8> {
        self.writer.finish()
    }

    /// Empties the batch for reuse.
    pub fn clear(&mut self) {
        self.writer.clear();
        self.resources.clear();
    }

    /// Adds one span (its encoded bytes and the fields already read) under its group. Groups are
    /// told apart by address, so the caller keeps them alive while the batch is built.
    pub fn add(&mut self, interest: &Interest, group: &Arc<Group>, bytes: &[u8], info: &SpanInfo) {
        self.add_with_links(interest, group, bytes, info, |_| true);
    }

    /// [`ViewBuilder::add`] with only the links whose trace id `keep` accepts (sharding: each
    /// worker gets the links into its own traces; see the `shard` module).
    pub fn add_with_links(
        &mut self,
        interest: &Interest,
        group: &Arc<Group>,
        bytes: &[u8],
        info: &SpanInfo,
        keep: impl FnMut(&TraceId) -> bool,
    ) {
        self.add_span(interest, group, bytes, info, None, keep);
    }

    /// [`ViewBuilder::add_with_links`] for a span whose selected attributes the wire walk
    /// already found (`picks`, for the same `interest`): they are written from there, and the
    /// span's bytes are walked only if it has links or events the interest wants.
    pub fn add_picked(
        &mut self,
        interest: &Interest,
        group: &Arc<Group>,
        bytes: &[u8],
        info: &SpanInfo,
        picks: &[Pick<'_>],
        keep: impl FnMut(&TraceId) -> bool,
    ) {
        self.add_span(interest, group, bytes, info, Some(picks), keep);
    }

    fn add_span(
        &mut self,
        interest: &Interest,
        group: &Arc<Group>,
        bytes: &[u8],
        info: &SpanInfo,
        picks: Option<&[Pick<'_>]>,
        mut keep: impl FnMut(&TraceId) -> bool,
    ) {
        let key = Arc::as_ptr(group) as usize;
        let resource = match self.resources.get(&key) {
            Some(&r) => r,
            None => {
                let (r, mut s) = self.writer.begin_resource();
                if let Some(res) = group.resource() {
                    write_attributes(
                        &mut self.writer,
                        &mut s,
                        res,
                        1,
                        &interest.resource_keys,
                        interest.all_resource_attributes,
                    );
                }
                self.writer.end_section(s);
                self.resources.insert(key, r);
                r
            }
        };
        let fixed = SpanFixed {
            trace_id: info.trace_id,
            span_id: info.span_id,
            parent_span_id: info.parent_span_id,
            start_unix_nano: info.start_unix_nano,
            end_unix_nano: info.end_unix_nano,
            encoded_len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            resource,
            kind: info.kind,
            status_code: info.status_code,
            flags: info.flags,
        };
        let w = &mut self.writer;
        w.begin_span(&fixed, info.name.as_bytes(), info.trace_state.as_bytes());
        // One walk over the span's fields: attributes are written as they come (unless the
        // wire walk picked them already); links and events (sections that follow the
        // attributes) are noted and written after.
        let mut link_fields: Vec<&[u8]> = Vec::new();
        let mut event_fields: Vec<&[u8]> = Vec::new();
        let mut attrs = w.begin_section();
        let (wants_attributes, walk) = match picks {
            Some(picks) => {
                for p in picks {
                    let slot = match p.index {
                        Some(i) => Slot::Indexed(i),
                        None => Slot::Inline(p.key),
                    };
                    write_any_value(w, &mut attrs, slot, 0, p.value);
                }
                (
                    false,
                    info.links_or_events && (interest.links || interest.events),
                )
            }
            None => {
                let wants = interest.wants_span_attributes();
                (wants, wants || interest.links || interest.events)
            }
        };
        if walk {
            // Only the part of the span that holds its attributes, events and links (the
            // whole span if that range is somehow out of bounds).
            let (start, end) = info.details;
            let details = bytes.get(start as usize..end as usize).unwrap_or(bytes);
            for f in Fields::new(details).filter_map(Result::ok) {
                let Ok(payload) = f.bytes() else { continue };
                match f.number {
                    sf::ATTRIBUTES if wants_attributes => write_key_value(
                        w,
                        &mut attrs,
                        payload,
                        &interest.span_keys,
                        interest.all_span_attributes,
                    ),
                    sf::LINKS if interest.links => link_fields.push(payload),
                    sf::EVENTS if interest.events => event_fields.push(payload),
                    _ => {}
                }
            }
        }
        w.end_section(attrs);
        let mut links = w.begin_section();
        for link in link_fields {
            if let Some((t, s)) = read_link(link)
                && keep(&t)
            {
                w.link(&mut links, &t, &s);
            }
        }
        w.end_section(links);
        let mut events = w.begin_section();
        for ev in event_fields {
            write_event(w, &mut events, ev, interest);
        }
        w.end_section(events);
    }
}

fn read_link(b: &[u8]) -> Option<(TraceId, SpanId)> {
    let mut t = None;
    let mut s = None;
    for f in Fields::new(b).filter_map(Result::ok) {
        match f.number {
            1 => t = f.bytes().ok().and_then(|b| <[u8; 16]>::try_from(b).ok()),
            2 => s = f.bytes().ok().and_then(|b| <[u8; 8]>::try_from(b).ok()),
            _ => {}
        }
    }
    Some((TraceId(t?), SpanId(s?)))
}

fn write_event(w: &mut BatchWriter, events: &mut Section, ev: &[u8], interest: &Interest) {
    let mut name: &[u8] = b"";
    let mut time = 0;
    for f in Fields::new(ev).filter_map(Result::ok) {
        match f.number {
            1 => time = f.fixed64().unwrap_or(0),
            2 => name = f.bytes().unwrap_or(b""),
            _ => {}
        }
    }
    w.event(events, name, time);
    let mut attrs = w.begin_section();
    write_attributes(
        w,
        &mut attrs,
        ev,
        3,
        &interest.span_keys,
        interest.all_span_attributes,
    );
    w.end_section(attrs);
}

/// Where the next value goes: an attribute (indexed or inline key) or an array item.
enum Slot<'k> {
    Indexed(u16),
    Inline(&'k [u8]),
    Item,
}

/// Writes the attributes (repeated `KeyValue` at `field` of `msg`) that `keys` selects, or all.
fn write_attributes(
    w: &mut BatchWriter,
    s: &mut Section,
    msg: &[u8],
    field: u32,
    keys: &Keys,
    all: bool,
) {
    for f in Fields::new(msg).filter_map(Result::ok) {
        if f.number != field {
            continue;
        }
        let Ok(kv) = f.bytes() else { continue };
        write_key_value(w, s, kv, keys, all);
    }
}

/// Writes one encoded `KeyValue` if `keys` selects it (or `all`).
#[inline]
fn write_key_value(w: &mut BatchWriter, s: &mut Section, kv: &[u8], keys: &Keys, all: bool) {
    let (key, value) = split_key_value(kv);
    if all {
        write_any_value(w, s, Slot::Inline(key), 0, value);
    } else if let Some(i) = keys.get(key) {
        write_any_value(w, s, Slot::Indexed(i), 0, value);
    }
}

fn split_key_value(kv: &[u8]) -> (&[u8], &[u8]) {
    if let Some(short) = short_key_value(kv) {
        return short;
    }
    let mut key: &[u8] = b"";
    let mut value: &[u8] = b"";
    for f in Fields::new(kv).filter_map(Result::ok) {
        match f.number {
            1 => key = f.bytes().unwrap_or(b""),
            2 => value = f.bytes().unwrap_or(b""),
            _ => {}
        }
    }
    (key, value)
}

/// Converts an encoded `AnyValue` into the layout's value encoding, in `slot` of section `s`.
fn write_any_value(w: &mut BatchWriter, s: &mut Section, slot: Slot<'_>, depth: usize, any: &[u8]) {
    let v = match slot {
        Slot::Indexed(i) => w.attr_indexed(s, i),
        Slot::Inline(k) => w.attr_inline(s, k),
        Slot::Item => w.array_item(s),
    };
    if let Some(string) = short_string_value(any) {
        return v.str(string);
    }
    let Some(f) = Fields::new(any).filter_map(Result::ok).last() else {
        return v.empty();
    };
    match f.number {
        1 => v.str(f.bytes().unwrap_or(b"")),
        2 => v.bool(f.varint().unwrap_or(0) != 0),
        3 => v.int(f.varint().unwrap_or(0) as i64),
        4 => v.double(f64::from_bits(f.fixed64().unwrap_or(0))),
        7 => v.bytes(f.bytes().unwrap_or(b"")),
        5 if depth < MAX_VALUE_DEPTH => {
            // ArrayValue { repeated AnyValue values = 1 }
            let mut items = v.begin_array();
            for item in Fields::new(f.bytes().unwrap_or(b"")).filter_map(Result::ok) {
                if item.number == 1 {
                    let b = item.bytes().unwrap_or(b"");
                    write_any_value(w, &mut items, Slot::Item, depth + 1, b);
                }
            }
            w.end_section(items);
        }
        6 if depth < MAX_VALUE_DEPTH => {
            // KeyValueList { repeated KeyValue values = 1 }
            let mut entries = v.begin_kvlist();
            for kv in Fields::new(f.bytes().unwrap_or(b"")).filter_map(Result::ok) {
                if kv.number == 1 {
                    let (key, value) = split_key_value(kv.bytes().unwrap_or(b""));
                    write_any_value(w, &mut entries, Slot::Inline(key), depth + 1, value);
                }
            }
            w.end_section(entries);
        }
        _ => v.empty(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::otlp::request::{parse_request, parse_request_with, span_info};
    use crate::otlp::wire::{put_len_field, put_varint_field};

    fn key_value(key: &str, value: &str) -> Vec<u8> {
        let mut any = Vec::new();
        put_len_field(&mut any, 1, value.as_bytes());
        let mut kv = Vec::new();
        put_len_field(&mut kv, 1, key.as_bytes());
        put_len_field(&mut kv, 2, &any);
        kv
    }

    /// A span whose attributes, events and links are scattered among its other fields, in no
    /// particular order (protobuf allows any).
    fn scattered_span() -> Vec<u8> {
        let mut link = Vec::new();
        put_len_field(&mut link, 1, &[7; 16]);
        put_len_field(&mut link, 2, &[8; 8]);
        let mut event = Vec::new();
        put_len_field(&mut event, 2, b"retry");
        put_len_field(&mut event, 3, &key_value("attempt", "2"));
        let mut status = Vec::new();
        put_varint_field(&mut status, 3, 2);
        let mut span = Vec::new();
        put_len_field(&mut span, sf::ATTRIBUTES, &key_value("first", "a"));
        put_len_field(&mut span, sf::TRACE_ID, &[1; 16]);
        put_len_field(&mut span, sf::LINKS, &link);
        put_len_field(&mut span, sf::SPAN_ID, &[2; 8]);
        put_len_field(
            &mut span,
            sf::ATTRIBUTES,
            &key_value("messaging.system", "kafka"),
        );
        put_len_field(&mut span, sf::STATUS, &status);
        put_len_field(&mut span, sf::EVENTS, &event);
        put_len_field(&mut span, sf::NAME, b"consume");
        put_len_field(&mut span, sf::ATTRIBUTES, &key_value("last", "z"));
        put_varint_field(&mut span, sf::KIND, 5);
        span
    }

    /// Walking only the range `details` names gives the view a walk of the whole span gives,
    /// for every interest, with the span's interesting fields scattered or absent.
    #[test]
    fn views_from_the_details_range_equal_views_from_the_whole_span() {
        let group = Arc::new(Group {
            resource_fields: Vec::new(),
            scope_fields: Vec::new(),
        });
        let mut bare = Vec::new();
        put_len_field(&mut bare, sf::TRACE_ID, &[1; 16]);
        put_len_field(&mut bare, sf::SPAN_ID, &[2; 8]);
        put_len_field(&mut bare, sf::NAME, b"bare");
        let keys = ["messaging.system".to_string(), "last".to_string()];
        for span in [scattered_span(), bare] {
            let info = span_info(&span).unwrap();
            let whole = SpanInfo {
                details: (0, span.len() as u32),
                ..info
            };
            for all in [false, true] {
                for links_and_events in [false, true] {
                    let interest =
                        Interest::new(&keys, &[], all, false, links_and_events, links_and_events);
                    let mut from_range = ViewBuilder::new();
                    from_range.add(&interest, &group, &span, &info);
                    let mut from_whole = ViewBuilder::new();
                    from_whole.add(&interest, &group, &span, &whole);
                    assert_eq!(from_range.as_bytes(), from_whole.as_bytes());
                }
            }
        }
        // In the usual field order the range leaves out the ids and name before and the status
        // after.
        let mut usual = Vec::new();
        put_len_field(&mut usual, sf::TRACE_ID, &[1; 16]);
        put_len_field(&mut usual, sf::SPAN_ID, &[2; 8]);
        put_len_field(&mut usual, sf::NAME, b"usual");
        let first = usual.len() as u32;
        put_len_field(&mut usual, sf::ATTRIBUTES, &key_value("last", "z"));
        let end = usual.len() as u32;
        put_len_field(&mut usual, sf::STATUS, &[0x18, 0x01]);
        assert_eq!(span_info(&usual).unwrap().details, (first, end));
    }

    /// An attribute whose value is not a short string (an int, a nested array with a
    /// non-ASCII string), and one whose key is too long for the wire walk's shortcut.
    fn unusual_attributes(span: &mut Vec<u8>) {
        let mut int = Vec::new();
        put_len_field(&mut int, 1, b"retries");
        put_len_field(&mut int, 2, &[0x18, 0x07]);
        put_len_field(span, sf::ATTRIBUTES, &int);
        let mut item = Vec::new();
        put_len_field(&mut item, 1, "größe".as_bytes());
        let mut array = Vec::new();
        put_len_field(&mut array, 1, &item);
        let mut any = Vec::new();
        put_len_field(&mut any, 5, &array);
        let mut nested = Vec::new();
        put_len_field(&mut nested, 1, b"last");
        put_len_field(&mut nested, 2, &any);
        put_len_field(span, sf::ATTRIBUTES, &nested);
        let long_key = "k".repeat(200);
        put_len_field(span, sf::ATTRIBUTES, &key_value(&long_key, "v"));
    }

    /// Views built from the attributes the checking walk picked equal views built by walking
    /// each span, for every interest, with spans whose attributes are usual, unusual, scattered
    /// among links and events, or absent, and with a rejected span (its picks must not leak
    /// into the next span's).
    #[test]
    fn views_from_picks_equal_views_from_the_walk() {
        let mut unusual = Vec::new();
        put_len_field(&mut unusual, sf::TRACE_ID, &[3; 16]);
        put_len_field(&mut unusual, sf::SPAN_ID, &[4; 8]);
        unusual_attributes(&mut unusual);
        put_len_field(&mut unusual, sf::ATTRIBUTES, &key_value("first", "b"));
        let mut rejected = Vec::new();
        put_len_field(&mut rejected, sf::ATTRIBUTES, &key_value("last", "x"));
        put_len_field(&mut rejected, sf::SPAN_ID, &[5; 8]);
        let mut bare = Vec::new();
        put_len_field(&mut bare, sf::TRACE_ID, &[1; 16]);
        put_len_field(&mut bare, sf::SPAN_ID, &[6; 8]);
        let mut scope_spans = Vec::new();
        for span in [scattered_span(), unusual, rejected, bare, scattered_span()] {
            put_len_field(&mut scope_spans, 2, &span);
        }
        let mut resource_spans = Vec::new();
        put_len_field(&mut resource_spans, 2, &scope_spans);
        let mut body = Vec::new();
        put_len_field(&mut body, 1, &resource_spans);

        let long_key = "k".repeat(200);
        let key_sets: [Vec<String>; 3] = [
            vec![],
            vec!["messaging.system".into(), "last".into(), "retries".into()],
            vec![long_key, "first".into()],
        ];
        for keys in &key_sets {
            for all in [false, true] {
                for links_and_events in [false, true] {
                    let interest =
                        Interest::new(keys, &[], all, false, links_and_events, links_and_events);
                    let walked = parse_request(&body).unwrap();
                    let picked = parse_request_with(&body, &interest).unwrap();
                    assert_eq!(walked.spans.len(), 4);
                    assert_eq!(picked.spans.len(), 4);
                    assert_eq!(picked.rejected, 1);
                    let mut from_walk = ViewBuilder::new();
                    let mut from_picks = ViewBuilder::new();
                    for (w, p) in walked.spans.iter().zip(&picked.spans) {
                        let group = &walked.groups[w.group];
                        from_walk.add(&interest, group, w.bytes, &w.info);
                        let picks = picked.picks_of(p);
                        from_picks.add_picked(&interest, group, p.bytes, &p.info, picks, |_| true);
                    }
                    assert_eq!(from_picks.as_bytes(), from_walk.as_bytes());
                    if keys.is_empty() && !all {
                        assert!(picked.picks.is_empty());
                    }
                }
            }
        }
        // Something was picked, and only the selected keys.
        let interest = Interest::new(&key_sets[1], &[], false, false, false, false);
        let picked = parse_request_with(&body, &interest).unwrap();
        let keys: Vec<&[u8]> = picked.picks.iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                &b"messaging.system"[..],
                b"last",
                b"retries",
                b"last",
                b"messaging.system",
                b"last"
            ]
        );
    }
}
