//! What every attempt to an endpoint needs and would otherwise work out again: its URL
//! parsed and its secrets decoded into signing keys. The worker keeps them per endpoint,
//! worked out at the endpoint's first attempt (in the attempt's task, off the worker's
//! loop) and kept while the endpoint's target stays the same, and for a while after its
//! lane went idle.

use std::sync::{Arc, OnceLock};

use foldhash::HashMap as FastMap;
use merpati_domain::endpoint::Target;
use merpati_domain::ids::EndpointId;
use merpati_webhooks::Webhook;

/// A target's URL and signing keys, worked out once.
#[derive(Debug, Default)]
pub(crate) struct Prepared(OnceLock<Result<Ready, Unusable>>);

#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) url: url::Url,
    pub(crate) uri: http::Uri,
    pub(crate) webhook: Webhook,
}

/// Why a target cannot be sent to: the attempt's error kind and message.
pub(crate) type Unusable = (&'static str, String);

impl Prepared {
    pub(crate) fn get(&self, target: &Target) -> Result<&Ready, Unusable> {
        self.0
            .get_or_init(|| {
                let url = url::Url::parse(&target.url)
                    .map_err(|e| ("forbidden_address", e.to_string()))?;
                let uri = url
                    .as_str()
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| ("request", e.to_string()))?;
                let webhook = Webhook::with_secrets(target.secrets.iter().map(String::as_str))
                    .map_err(|e| ("invalid_secret", e.to_string()))?;
                Ok(Ready { url, uri, webhook })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// The worker's prepared targets, by endpoint.
pub(crate) struct PreparedTargets {
    entries: FastMap<EndpointId, Entry>,
    /// Entries are pruned of what is unused for [`KEEP_MS`] when they grow to this.
    prune_at: usize,
}

struct Entry {
    target: Arc<Target>,
    prepared: Arc<Prepared>,
    used_at: i64,
}

/// How long an endpoint's keys are kept unused.
const KEEP_MS: i64 = 60_000;
/// Entries are not pruned before there are this many.
const MIN_PRUNE: usize = 1024;

impl Default for PreparedTargets {
    fn default() -> Self {
        PreparedTargets {
            entries: FastMap::default(),
            prune_at: MIN_PRUNE,
        }
    }
}

impl PreparedTargets {
    /// The keys for `target` as it is now: the same as before while the endpoint's
    /// target is unchanged (the store hands out the same one, or an equal one), new ones
    /// once it changed (a new URL, a rotated secret).
    pub(crate) fn for_target(&mut self, target: &Arc<Target>, now: i64) -> Arc<Prepared> {
        if let Some(entry) = self.entries.get_mut(&target.id) {
            if Arc::ptr_eq(&entry.target, target) || *entry.target == **target {
                entry.used_at = now;
                return entry.prepared.clone();
            }
        }
        let prepared = Arc::new(Prepared::default());
        self.entries.insert(
            target.id.clone(),
            Entry {
                target: target.clone(),
                prepared: prepared.clone(),
                used_at: now,
            },
        );
        if self.entries.len() >= self.prune_at {
            self.entries.retain(|_, e| now - e.used_at < KEEP_MS);
            self.prune_at = (self.entries.len() * 2).max(MIN_PRUNE);
        }
        prepared
    }

    /// A deleted endpoint's keys go.
    pub(crate) fn forget(&mut self, endpoint: &EndpointId) {
        self.entries.remove(endpoint);
    }

    /// Every endpoint's keys go (the worker is idle and gives its memory back).
    pub(crate) fn clear(&mut self) {
        *self = PreparedTargets::default();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::handoff::tests::due;

    #[test]
    fn keys_are_worked_out_again_only_when_the_target_changed() {
        let mut targets = PreparedTargets::default();
        let target = due(1).endpoint;
        let first = targets.for_target(&target, 0);
        assert!(Arc::ptr_eq(&first, &targets.for_target(&target, 1)));
        // An equal target read again by the store: the same keys.
        let equal = Arc::new((*target).clone());
        assert!(Arc::ptr_eq(&first, &targets.for_target(&equal, 2)));
        // A rotated secret: new keys.
        let mut rotated = (*target).clone();
        rotated.secrets = vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()];
        let second = targets.for_target(&Arc::new(rotated), 3);
        assert!(!Arc::ptr_eq(&first, &second));
        targets.forget(&target.id);
        assert_eq!(targets.len(), 0);
    }

    #[test]
    fn keys_unused_for_a_minute_are_pruned_as_they_grow() {
        let mut targets = PreparedTargets::default();
        for i in 0..MIN_PRUNE - 1 {
            let mut t = (*due(1).endpoint).clone();
            t.id = format!("old{i}").into();
            targets.for_target(&Arc::new(t), 0);
        }
        assert_eq!(targets.len(), MIN_PRUNE - 1);
        targets.for_target(&due(1).endpoint, KEEP_MS);
        assert_eq!(targets.len(), 1, "only the one used now is kept");
    }

    #[test]
    fn an_unusable_secret_is_told_at_the_attempt() {
        let mut target = (*due(1).endpoint).clone();
        target.secrets = vec!["not a secret".into()];
        let prepared = Prepared::default();
        assert_eq!(prepared.get(&target).unwrap_err().0, "invalid_secret");
    }
}
