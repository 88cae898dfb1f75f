//! The targets of endpoints whose deliveries other nodes offer with the deliveries
//! carried (`merpati_domain::slots::Carried`), kept from one offer to the next. An offer
//! names how far the store's changes to endpoints had gone for the write that made it;
//! what is kept serves it if it was read at least that far, and its secrets still live.
//! Otherwise the targets are read again, the number of changes first, so that what is kept
//! is never older than the number it is kept under (as `EndpointCache`).

use std::collections::HashMap;
use std::sync::Arc;

use merpati_domain::endpoint::Target;
use merpati_domain::ids::EndpointId;

#[derive(Default)]
pub(crate) struct OfferTargets {
    /// The number of changes what is kept was read at.
    read_at: i64,
    /// Each target, and when its earliest live secret expires.
    targets: HashMap<EndpointId, (Arc<Target>, Option<i64>)>,
}

impl OfferTargets {
    /// The target kept, if read at least as far as `seen`, with its secrets live at `now`.
    pub(crate) fn kept(&self, endpoint: &EndpointId, seen: i64, now: i64) -> Option<Arc<Target>> {
        if seen > self.read_at {
            return None;
        }
        let (target, expires) = self.targets.get(endpoint)?;
        expires.is_none_or(|at| now < at).then(|| target.clone())
    }

    /// Keeps targets read at `read_at`. What was kept from before goes if they are newer;
    /// targets read before what is kept (a read that took longer) are not kept.
    pub(crate) fn keep(
        &mut self,
        read_at: i64,
        targets: impl IntoIterator<Item = (EndpointId, (Arc<Target>, Option<i64>))>,
    ) {
        if read_at < self.read_at {
            return;
        }
        if read_at > self.read_at {
            self.targets.clear();
            self.read_at = read_at;
        }
        self.targets.extend(targets);
    }
}

#[cfg(test)]
mod tests {
    use merpati_domain::endpoint::BodyFormat;

    use super::*;

    fn target(url: &str) -> Arc<Target> {
        Arc::new(Target {
            id: "ep".into(),
            account_id: "acct".into(),
            url: url.into(),
            format: BodyFormat::Json,
            secret_in_body: false,
            headers: Default::default(),
            secrets: vec!["whsec_x".into()],
            max_concurrency: None,
            rate_limit: None,
            ordered: false,
            breaker: None,
        })
    }

    #[test]
    fn a_target_kept_serves_offers_that_saw_no_further_changes_while_its_secrets_live() {
        let ep = EndpointId::from("ep");
        let mut kept = OfferTargets::default();
        assert!(kept.kept(&ep, 0, 0).is_none(), "nothing kept");
        kept.keep(5, [(ep.clone(), (target("https://a"), Some(1_000)))]);
        assert_eq!(kept.kept(&ep, 5, 10).unwrap().url, "https://a");
        assert_eq!(kept.kept(&ep, 3, 10).unwrap().url, "https://a", "seen less");
        assert!(
            kept.kept(&ep, 6, 10).is_none(),
            "a change since it was read"
        );
        assert!(
            kept.kept(&ep, 5, 1_000).is_none(),
            "its earliest secret expired"
        );
        assert!(kept.kept(&"other".into(), 5, 10).is_none());

        // A read that started before the one kept answers its offers, and is not kept.
        kept.keep(4, [(ep.clone(), (target("https://old"), None))]);
        assert_eq!(kept.kept(&ep, 5, 10).unwrap().url, "https://a");
        // A newer read replaces everything kept.
        let other = EndpointId::from("other");
        kept.keep(7, [(other.clone(), (target("https://b"), None))]);
        assert!(kept.kept(&ep, 5, 10).is_none());
        assert_eq!(kept.kept(&other, 7, 10).unwrap().url, "https://b");
    }
}
