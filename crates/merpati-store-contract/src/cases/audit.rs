//! The audit trail: entries kept in the order they came, listed per account newest first,
//! paged, and pruned by age.

use merpati_domain::audit::AuditEntry;
use merpati_domain::ids::AccountId;
use merpati_domain::SharedStore;

use crate::support::T0;

fn entry(account: &str, object: &str, at: i64) -> AuditEntry {
    AuditEntry {
        id: 0,
        account_id: Some(AccountId::from(account)),
        actor: "api_key:key_1".into(),
        address: Some("127.0.0.1".into()),
        method: "PATCH".into(),
        route: "/v1/endpoints/{id}".into(),
        object_id: Some(object.into()),
        fields: vec!["secret".into(), "url".into()],
        status: 200,
        at,
    }
}

pub async fn the_audit_trail_is_each_account_s_newest_first_until_pruned(store: &SharedStore) {
    let first = store.record_audit(entry("acct", "ep_1", T0)).await.unwrap();
    store
        .record_audit(entry("other", "ep_9", T0 + 1))
        .await
        .unwrap();
    let third = store
        .record_audit(entry("acct", "ep_2", T0 + 2))
        .await
        .unwrap();
    assert!(third.id > first.id);
    let acct = AccountId::from("acct");
    let all = store.list_audit(acct.clone(), None, 10).await.unwrap();
    assert_eq!(all, vec![third.clone(), first.clone()]);
    assert_eq!(all[1].fields, ["secret", "url"]);
    let page = store
        .list_audit(acct.clone(), Some(third.id), 10)
        .await
        .unwrap();
    assert_eq!(page, vec![first]);
    assert_eq!(
        store.list_audit(acct.clone(), None, 1).await.unwrap(),
        vec![third.clone()]
    );
    // Older than T0 + 2 goes; the newest stays.
    assert_eq!(store.prune_audit(T0 + 2, 10).await.unwrap(), 2);
    assert_eq!(store.list_audit(acct, None, 10).await.unwrap(), vec![third]);
    assert!(store
        .list_audit(AccountId::from("other"), None, 10)
        .await
        .unwrap()
        .is_empty());
}
