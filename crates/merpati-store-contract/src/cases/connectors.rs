//! Connectors: the account's, checked against its channels and devices, kept at their
//! revision, found by id alone for inbound requests with the secrets live then, gone with
//! the account.

use merpati_domain::connector::{Connector, EngineApi};
use merpati_domain::ids::{ConnectorId, DeviceId};
use merpati_domain::{SharedStore, StoreError};

use crate::support::*;

fn connector(t: &Tree, id: &str) -> Connector {
    Connector {
        id: ConnectorId::from(id),
        account_id: t.account.clone(),
        engine: "waha".into(),
        channel_id: t.channel.clone(),
        device_id: None,
        bindings: [
            ("default".to_string(), t.devices[0].device_id.clone()),
            ("second".to_string(), t.devices[1].device_id.clone()),
        ]
        .into(),
        api: Some(EngineApi {
            base_url: "http://127.0.0.1:3000".into(),
            key: "waha-api-key".into(),
        }),
        poll_interval_ms: Some(30_000),
        notifications: false,
        created_at: T0,
        updated_at: T0,
        revision: 0,
    }
}

pub async fn connectors_are_the_account_s_checked_and_found_by_id_with_live_secrets(
    store: &SharedStore,
) {
    let t = tree(store, "acct", 2).await;
    let other = tree(store, "other", 3).await;
    let made = store
        .create_connector(connector(&t, "con_1"), "first".into())
        .await
        .unwrap();
    assert_eq!(made, connector(&t, "con_1"));
    assert!(matches!(
        store
            .create_connector(connector(&t, "con_1"), "x".into())
            .await,
        Err(StoreError::Conflict(_))
    ));

    // Another account's device, a device on another channel, a channel not the account's.
    let mut foreign = connector(&t, "con_2");
    foreign
        .bindings
        .insert("x".into(), other.devices[2].device_id.clone());
    assert!(matches!(
        store.create_connector(foreign, "s".into()).await,
        Err(StoreError::Invalid(_))
    ));
    let mut elsewhere = connector(&other, "con_3");
    elsewhere.bindings.clear();
    elsewhere.channel_id = "nope".into();
    assert!(matches!(
        store.create_connector(elsewhere, "s".into()).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .get_connector(other.account.clone(), "con_1".into())
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store
            .list_connectors(t.account.clone())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.polled_connectors().await.unwrap().len(), 1);

    // Kept only at the revision it was read at.
    let mut changed = made.clone();
    changed.bindings.remove("second");
    changed.device_id = Some(DeviceId::from("dev1"));
    changed.updated_at = T0 + 1;
    let stored = store.update_connector(changed.clone()).await.unwrap();
    assert_eq!(stored.revision, 1);
    assert_eq!(stored.device_id, Some(DeviceId::from("dev1")));
    assert!(matches!(
        store.update_connector(changed).await,
        Err(StoreError::Stale(_))
    ));

    // Inbound: by id alone, newest secret first, a rotated-out one until its grace ends.
    let found = store
        .inbound_connector("con_1".into(), T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.secrets, ["first"]);
    assert_eq!(found.connector.account_id, t.account);
    store
        .rotate_connector_secret(
            t.account.clone(),
            "con_1".into(),
            "second".into(),
            T0 + 100,
            T0 + 10,
        )
        .await
        .unwrap();
    let during = store
        .inbound_connector("con_1".into(), T0 + 50)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(during.secrets, ["second", "first"]);
    let after = store
        .inbound_connector("con_1".into(), T0 + 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.secrets, ["second"]);
    assert!(matches!(
        store
            .rotate_connector_secret(other.account.clone(), "con_1".into(), "x".into(), T0, T0)
            .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        store.inbound_connector("nope".into(), T0).await.unwrap(),
        None
    );

    // Deleted with its secrets; and with the account.
    store
        .create_connector(connector(&t, "con_9"), "s9".into())
        .await
        .unwrap();
    store
        .delete_connector(t.account.clone(), "con_1".into())
        .await
        .unwrap();
    assert_eq!(
        store.inbound_connector("con_1".into(), T0).await.unwrap(),
        None
    );
    assert!(matches!(
        store
            .delete_connector(t.account.clone(), "con_1".into())
            .await,
        Err(StoreError::NotFound(_))
    ));
    store
        .delete_account(t.account.clone(), T0 + 200)
        .await
        .unwrap();
    assert_eq!(
        store.inbound_connector("con_9".into(), T0).await.unwrap(),
        None
    );
}
