//! The guest's interest: which parts of each span the host must extract into the span-view
//! batch. Mirrors the WIT `interest` record. Key lists are append-only while the sampler is
//! configured, so the index of a key (what the span views carry instead of the key) is stable.

/// The resource attribute every configuration reads: the service of a span.
pub const SERVICE_NAME: &str = "service.name";

/// Most keys one list may hold: key references are `u16` and `0xFFFF` means "key inline".
pub const MAX_KEYS: usize = tracekeeper_abi::KEY_INLINE as usize;

/// What the host extracts from each span for the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interest {
    /// Span attribute keys the policies read (also the keys of event attributes).
    pub span_attributes: Vec<String>,
    /// Resource attribute keys the policies read.
    pub resource_attributes: Vec<String>,
    /// Send every span attribute (keys inline).
    pub all_span_attributes: bool,
    /// Send every resource attribute (keys inline).
    pub all_resource_attributes: bool,
    /// Send span links.
    pub links: bool,
    /// Send span events.
    pub events: bool,
}

impl Interest {
    /// The interest of the sampler before any policy adds its keys: the service name only.
    pub fn for_current_policies() -> Self {
        Interest {
            resource_attributes: vec![SERVICE_NAME.to_owned()],
            ..Interest::default()
        }
    }

    /// The index of span attribute `key`, added to the list if absent. `None` when the list is
    /// full ([`MAX_KEYS`]).
    pub fn span_attribute(&mut self, key: &str) -> Option<u16> {
        index_of(&mut self.span_attributes, key)
    }

    /// The index of resource attribute `key`, added to the list if absent. `None` when the list
    /// is full ([`MAX_KEYS`]).
    pub fn resource_attribute(&mut self, key: &str) -> Option<u16> {
        index_of(&mut self.resource_attributes, key)
    }
}

fn index_of(keys: &mut Vec<String>, key: &str) -> Option<u16> {
    let i = match keys.iter().position(|k| k == key) {
        Some(i) => i,
        None if keys.len() < MAX_KEYS => {
            keys.push(key.to_owned());
            keys.len() - 1
        }
        None => return None,
    };
    u16::try_from(i).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_interned_in_order() {
        let mut i = Interest::for_current_policies();
        assert_eq!(i.resource_attribute(SERVICE_NAME), Some(0));
        assert_eq!(i.resource_attribute("k8s.pod.name"), Some(1));
        assert_eq!(i.span_attribute("http.route"), Some(0));
        assert_eq!(i.span_attribute("db.system"), Some(1));
        assert_eq!(i.span_attribute("http.route"), Some(0));
        assert_eq!(i.span_attributes, ["http.route", "db.system"]);
        assert_eq!(i.resource_attributes, [SERVICE_NAME, "k8s.pod.name"]);
    }

    #[test]
    fn a_full_list_refuses_new_keys() {
        let mut i = Interest {
            span_attributes: (0..MAX_KEYS).map(|n| n.to_string()).collect(),
            ..Interest::default()
        };
        assert_eq!(i.span_attribute("0"), Some(0));
        assert_eq!(i.span_attribute("new"), None);
    }
}
