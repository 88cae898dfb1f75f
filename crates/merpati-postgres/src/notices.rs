//! Offers as notification payloads, each on the channel of its slot, which only the slot's
//! owner listens to. A payload is `slot:item,item,…` (a slot alone wakes its owner to look
//! for what is due; a reader also takes several such entries separated by `;`); an
//! item is a delivery's id, or, when
//! the offer carries its delivery, `id/until/endpoints_seen/event/endpoint/payload` with
//! the three texts in URL-safe base64. Nothing in a payload needs quoting in SQL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use merpati_domain::ids::{DeliveryId, EndpointId, EventId};
use merpati_domain::slots::{Carried, Offer, Offered, Slot, SLOTS};

/// The channel on which the owner of a slot hears of the deliveries other nodes offer it.
pub(crate) fn due_channel(slot: Slot) -> String {
    format!("merpati_due_{slot}")
}

/// The longest payload sent: PostgreSQL takes up to 8,000 bytes.
const MAX_NOTICE: usize = 7_900;

/// The longest item that carries its delivery, so that a payload holds several; a longer
/// one names the delivery only, and its owner reads it. Every id is at most 20 bytes, so
/// an item naming a delivery always fits.
const MAX_CARRIED: usize = 2_000;

/// The offers as notification payloads, each for one slot's channel, as many as their
/// length needs.
pub(crate) fn notices(offers: &[Offer]) -> Vec<(Slot, String)> {
    let mut payloads: Vec<(Slot, String)> = Vec::new();
    for offer in offers {
        let mut payload = offer.slot.to_string();
        let mut separator = ':';
        for offered in &offer.deliveries {
            let item = item(offered);
            if separator == ',' && payload.len() + 1 + item.len() > MAX_NOTICE {
                payloads.push((offer.slot, std::mem::take(&mut payload)));
                payload = offer.slot.to_string();
                separator = ':';
            }
            payload.push(separator);
            payload.push_str(&item);
            separator = ',';
        }
        payloads.push((offer.slot, payload));
    }
    payloads
}

fn item(offered: &Offered) -> String {
    let id = offered.id.0.to_string();
    if let Some(c) = &offered.carried {
        let text = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let carried = format!(
            "{id}/{}/{}/{}/{}/{}",
            c.until,
            c.endpoints_seen,
            text(c.event_id.as_str()),
            text(c.endpoint_id.as_str()),
            text(&c.payload)
        );
        if carried.len() <= MAX_CARRIED {
            return carried;
        }
    }
    id
}

/// The offers a notification makes. What does not parse is skipped; an item whose id
/// parses but whose carried delivery does not names the delivery only.
pub(crate) fn parse_offers(payload: &str) -> Vec<Offer> {
    payload
        .split(';')
        .filter_map(|entry| {
            let (slot, items) = entry.split_once(':').unwrap_or((entry, ""));
            let slot: Slot = slot.trim().parse().ok().filter(|s| *s < SLOTS)?;
            let deliveries = items.split(',').filter_map(parse_item).collect();
            Some(Offer { slot, deliveries })
        })
        .collect()
}

fn parse_item(item: &str) -> Option<Offered> {
    let mut fields = item.split('/');
    let id = DeliveryId(fields.next()?.trim().parse().ok()?);
    let mut carried = || -> Option<Carried> {
        let until = fields.next()?.parse().ok()?;
        let endpoints_seen = fields.next()?.parse().ok()?;
        let mut text = || -> Option<String> {
            String::from_utf8(URL_SAFE_NO_PAD.decode(fields.next()?).ok()?).ok()
        };
        let (event_id, endpoint_id, payload) = (text()?, text()?, text()?);
        Some(Carried {
            event_id: EventId::from(event_id),
            payload: payload.into(),
            endpoint_id: EndpointId::from(endpoint_id),
            until,
            endpoints_seen,
        })
    };
    Some(Offered {
        id,
        carried: carried(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(slot: Slot, ids: std::ops::Range<i64>) -> Offer {
        Offer {
            slot,
            deliveries: ids.map(|i| Offered::named(DeliveryId(i))).collect(),
        }
    }

    fn carrying(id: i64, payload: &str) -> Offered {
        Offered {
            id: DeliveryId(id),
            carried: Some(Carried {
                event_id: EventId::from(format!("evt_{id}")),
                payload: payload.into(),
                endpoint_id: EndpointId::from("ep_1"),
                until: 1_700_000_000_500,
                endpoints_seen: 42,
            }),
        }
    }

    #[test]
    fn offers_go_in_payloads_postgresql_takes_and_come_back_whole() {
        let offers = vec![
            named(3, 1..4),
            named(7, 0..0),
            named(63, 1_000_000..1_002_000),
        ];
        let payloads = notices(&offers);
        assert!(payloads.len() > 3, "2,000 ids of 7 digits need several");
        assert!(payloads.iter().all(|(_, p)| p.len() <= MAX_NOTICE));
        assert_eq!(payloads[0], (3, "3:1,2,3".to_string()));
        assert_eq!(payloads[1], (7, "7".to_string()), "one channel a slot");
        assert!(payloads[2..].iter().all(|(slot, _)| *slot == 63));
        let back: Vec<Offer> = payloads.iter().flat_map(|(_, p)| parse_offers(p)).collect();
        assert_eq!(back[..2], offers[..2]);
        let slot_63: Vec<Offered> = back[2..]
            .iter()
            .inspect(|o| assert_eq!(o.slot, 63))
            .flat_map(|o| o.deliveries.clone())
            .collect();
        assert_eq!(slot_63, offers[2].deliveries);
    }

    /// A body with what would end an SQL literal or a field, in any script, comes back
    /// byte for byte; the payload holds nothing but digits, separators and base64.
    #[test]
    fn a_carried_delivery_comes_back_byte_for_byte_and_needs_no_quoting() {
        let body = r#"{"message":"it's 'quoted'; a/b, c:d \\ ñ 你好 🙂","n":1}"#;
        let offers = vec![Offer {
            slot: 5,
            deliveries: vec![carrying(9, body), Offered::named(DeliveryId(10))],
        }];
        let payloads = notices(&offers);
        assert_eq!(payloads.len(), 1);
        let (slot, payload) = &payloads[0];
        assert_eq!(*slot, 5);
        assert!(payload
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":;,/-_".contains(c)));
        assert_eq!(parse_offers(payload), offers);
    }

    /// A body too long to carry names its delivery only; many carried fill several
    /// payloads, each within PostgreSQL's limit.
    #[test]
    fn a_long_body_names_its_delivery_and_many_fill_several_payloads() {
        let long = "x".repeat(MAX_CARRIED);
        let offers = vec![Offer {
            slot: 1,
            deliveries: (0..40)
                .map(|i| carrying(i, if i == 0 { &long } else { "{\"sms\":\"hi\"}" }))
                .collect(),
        }];
        let payloads = notices(&offers);
        assert!(payloads.iter().all(|(_, p)| p.len() <= MAX_NOTICE));
        let back: Vec<Offered> = payloads
            .iter()
            .flat_map(|(_, p)| parse_offers(p))
            .flat_map(|o| o.deliveries)
            .collect();
        assert_eq!(back[0], Offered::named(DeliveryId(0)));
        assert_eq!(back[1..], offers[0].deliveries[1..]);

        let many = vec![Offer {
            slot: 2,
            deliveries: (0..100).map(|i| carrying(i, &"y".repeat(900))).collect(),
        }];
        let payloads = notices(&many);
        assert!(payloads.len() > 10, "{}", payloads.len());
        assert!(payloads.iter().all(|(_, p)| p.len() <= MAX_NOTICE));
        let back: Vec<Offer> = payloads.iter().flat_map(|(_, p)| parse_offers(p)).collect();
        assert!(back.iter().all(|o| o.slot == 2));
        let back: Vec<Offered> = back.into_iter().flat_map(|o| o.deliveries).collect();
        assert_eq!(back, many[0].deliveries);
    }

    #[test]
    fn what_does_not_parse_is_skipped() {
        assert_eq!(
            parse_offers("x;64:1;5:2,y,3"),
            [Offer {
                slot: 5,
                deliveries: vec![Offered::named(DeliveryId(2)), Offered::named(DeliveryId(3))]
            }]
        );
        // A carried delivery cut short is named only: its owner reads it.
        assert_eq!(
            parse_offers("5:7/100/3/ZXZ0"),
            [Offer {
                slot: 5,
                deliveries: vec![Offered::named(DeliveryId(7))]
            }]
        );
    }
}
