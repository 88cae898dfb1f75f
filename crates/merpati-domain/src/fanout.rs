//! Fan-out: which deliveries an event makes, and where each one goes (held, waiting in its
//! device queue, due, or handed straight to the worker). A backend asks these rules and
//! writes what they say, in the transaction that stores the event.

use std::sync::Arc;

use crate::delivery::{DueDelivery, Reservation};
use crate::device::Scope;
use crate::endpoint::{Subscription, Target};
use crate::ids::{DeliveryId, DeviceId, EndpointId, EventId};
use crate::slots::{Carried, Offered};

/// One delivery an event makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned<'a> {
    pub endpoint_id: &'a EndpointId,
    /// The device queue it joins, on an endpoint that takes each device's events in order.
    pub order_key: Option<&'a DeviceId>,
    /// Its endpoint is disabled: the delivery is kept, held.
    pub disabled: bool,
}

/// One delivery for every endpoint the event matches.
pub fn plan<'a>(
    subscriptions: &'a [Subscription],
    event_type: &'a str,
    scope: Scope<'a>,
) -> impl Iterator<Item = Planned<'a>> + 'a {
    subscriptions
        .iter()
        .filter(move |s| s.matches(event_type, scope))
        .map(move |s| Planned {
            endpoint_id: &s.endpoint_id,
            order_key: order_key(s.ordered, scope.device_id),
            disabled: s.disabled,
        })
}

/// The endpoints an event replayed to `named` (or to all it matches now) goes to: one named
/// explicitly gets it whatever its filters say.
pub fn replay_to(subscriptions: &[Subscription], named: Option<&EndpointId>) -> Vec<Subscription> {
    match named {
        Some(endpoint) => subscriptions
            .iter()
            .filter(|s| s.endpoint_id == *endpoint)
            .map(Subscription::unfiltered)
            .collect(),
        None => subscriptions.to_vec(),
    }
}

/// The device queue a delivery joins: its device's, on an ordered endpoint.
pub fn order_key(ordered: bool, device: Option<&DeviceId>) -> Option<&DeviceId> {
    device.filter(|_| ordered)
}

/// Where a new delivery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Its endpoint is disabled.
    Held,
    /// Behind an earlier delivery of its device queue, with no due time.
    Waiting,
    Due,
    /// Due now and leased to the worker until the given time, handed over once committed.
    Leased(i64),
    /// Due now, of a slot another node holds: leased to that node until the given time,
    /// and offered to it once committed.
    Offered(i64),
}

/// Held while the endpoint is disabled; waiting when an earlier delivery of the same device
/// queue has not reached its outcome (`queue_busy`, asked only of a queue it would join);
/// due now otherwise.
pub fn place<E>(
    disabled: bool,
    order_key: Option<&DeviceId>,
    queue_busy: impl FnOnce(&DeviceId) -> Result<bool, E>,
) -> Result<Place, E> {
    Ok(match order_key {
        _ if disabled => Place::Held,
        Some(key) if queue_busy(key)? => Place::Waiting,
        _ => Place::Due,
    })
}

/// A delivery due now goes straight to the worker while it has room and owns the
/// endpoint's slot, and is offered to the slot's owner when another node owns it.
pub fn hand_over(
    place: Place,
    endpoint: &EndpointId,
    reservation: Option<&mut (dyn Reservation + '_)>,
) -> Place {
    match (place, reservation) {
        (Place::Due, Some(r)) => {
            if r.take_room(endpoint) {
                Place::Leased(r.lease_until())
            } else if let Some(until) = r.offer_until(endpoint) {
                Place::Offered(until)
            } else {
                Place::Due
            }
        }
        (place, _) => place,
    }
}

/// An event as a write stored it: its id and the exact body to deliver.
pub struct EventBody<'a> {
    pub id: &'a EventId,
    pub payload: Arc<str>,
}

/// Deliveries leased to the worker as a write stores them, for ingest to hand over once
/// the transaction commits.
pub struct Handing<'a> {
    pub reservation: &'a mut dyn Reservation,
    pub event: &'a EventBody<'a>,
}

/// A delivery a write just stored where [`hand_over`] placed it.
pub struct Stored<'a> {
    pub place: Place,
    pub delivery: DeliveryId,
    pub endpoint: &'a EndpointId,
    /// How far the write had seen endpoints change, when the store counts it: an offer
    /// then carries the delivery whole, and the owner knows how new a target it needs.
    /// `None` names the delivery only.
    pub endpoints_seen: Option<i64>,
}

/// Gives the write's handing what it takes of a stored delivery: a leased one with its
/// endpoint's target (`target`, read only then), an offered one to its slot's owner.
/// Returns whether the delivery is due and left for a claim.
pub fn take_stored<E>(
    stored: Stored<'_>,
    handing: Option<&mut Handing<'_>>,
    target: impl FnOnce() -> Result<Arc<Target>, E>,
) -> Result<bool, E> {
    match (stored.place, handing) {
        (Place::Leased(_), Some(h)) => h.reservation.push(DueDelivery {
            delivery_id: stored.delivery,
            attempt: 1,
            event_id: h.event.id.clone(),
            payload: h.event.payload.clone(),
            endpoint: target()?,
        }),
        (Place::Offered(until), Some(h)) => {
            let carried = stored.endpoints_seen.map(|endpoints_seen| Carried {
                event_id: h.event.id.clone(),
                payload: h.event.payload.clone(),
                endpoint_id: stored.endpoint.clone(),
                until,
                endpoints_seen,
            });
            h.reservation.offered(
                stored.endpoint,
                Offered {
                    id: stored.delivery,
                    carried,
                },
            );
        }
        (Place::Due, _) => return Ok(true),
        _ => {}
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BusinessId, ChannelId};

    fn sub(id: &str, ordered: bool, disabled: bool, channels: &[&str]) -> Subscription {
        Subscription {
            endpoint_id: id.into(),
            ordered,
            disabled,
            channel_ids: channels.iter().map(|c| ChannelId::from(*c)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_event_goes_to_every_matching_endpoint_and_queues_only_where_ordered() {
        let subs = [
            sub("plain", false, false, &[]),
            sub("ordered", true, false, &[]),
            sub("elsewhere", false, false, &["ch_2"]),
            sub("off", true, true, &[]),
        ];
        let (b, c, d) = (
            BusinessId::from("b"),
            ChannelId::from("ch_1"),
            DeviceId::from("dev"),
        );
        let scope = Scope {
            business_id: Some(&b),
            channel_id: Some(&c),
            device_id: Some(&d),
        };
        let planned: Vec<_> = plan(&subs, "sms", scope)
            .map(|p| {
                (
                    p.endpoint_id.as_str(),
                    p.order_key.map(DeviceId::as_str),
                    p.disabled,
                )
            })
            .collect();
        assert_eq!(
            planned,
            [
                ("plain", None, false),
                ("ordered", Some("dev"), false),
                ("off", Some("dev"), true)
            ]
        );
        // An event of no device queues nowhere.
        let account_wide: Vec<_> = plan(&subs[1..2], "sms", Scope::default())
            .map(|p| p.order_key)
            .collect();
        assert_eq!(account_wide, [None]);
    }

    #[test]
    fn placement_holds_queues_or_makes_due() {
        let dev = DeviceId::from("dev");
        let never = |_: &DeviceId| -> Result<bool, ()> { panic!("not asked") };
        assert_eq!(place(true, Some(&dev), never), Ok(Place::Held));
        assert_eq!(place(false, None, never), Ok(Place::Due));
        assert_eq!(
            place(false, Some(&dev), |_| Ok::<_, ()>(true)),
            Ok(Place::Waiting)
        );
        assert_eq!(
            place(false, Some(&dev), |_| Ok::<_, ()>(false)),
            Ok(Place::Due)
        );
        assert_eq!(place(false, Some(&dev), |_| Err("lookup")), Err("lookup"));
    }

    struct Room(usize, Vec<DueDelivery>, Vec<Offered>);

    impl Reservation for Room {
        fn take_room(&mut self, endpoint: &EndpointId) -> bool {
            if endpoint.as_str() == "ep_elsewhere" {
                return false;
            }
            let free = self.0 > 0;
            self.0 = self.0.saturating_sub(1);
            free
        }
        fn lease_until(&self) -> i64 {
            99
        }
        fn offer_until(&mut self, endpoint: &EndpointId) -> Option<i64> {
            (endpoint.as_str() == "ep_elsewhere").then_some(7)
        }
        fn offered(&mut self, _endpoint: &EndpointId, delivery: Offered) {
            self.2.push(delivery);
        }
        fn push(&mut self, delivery: DueDelivery) {
            self.1.push(delivery);
        }
        fn hand_over(self: Box<Self>) {}
        fn unanswered(self: Box<Self>) {}
    }

    #[test]
    fn what_is_due_is_handed_over_while_there_is_room_or_offered_to_its_slots_owner() {
        let mut room = Room(1, Vec::new(), Vec::new());
        let ep = EndpointId::from("ep_here");
        assert_eq!(hand_over(Place::Held, &ep, Some(&mut room)), Place::Held);
        assert_eq!(
            hand_over(Place::Waiting, &ep, Some(&mut room)),
            Place::Waiting
        );
        assert_eq!(hand_over(Place::Due, &ep, None), Place::Due);
        assert_eq!(
            hand_over(Place::Due, &"ep_elsewhere".into(), Some(&mut room)),
            Place::Offered(7),
            "another node owns its slot"
        );
        assert_eq!(
            hand_over(Place::Due, &ep, Some(&mut room)),
            Place::Leased(99)
        );
        assert_eq!(
            hand_over(Place::Due, &ep, Some(&mut room)),
            Place::Due,
            "no room left"
        );
        assert_eq!(
            hand_over(Place::Waiting, &"ep_elsewhere".into(), Some(&mut room)),
            Place::Waiting,
            "only what is due now is offered"
        );
    }

    fn target_of(endpoint: &EndpointId) -> crate::endpoint::Target {
        crate::endpoint::Target {
            id: endpoint.clone(),
            account_id: "acct".into(),
            url: "http://127.0.0.1/hook".into(),
            format: crate::endpoint::BodyFormat::Json,
            secret_in_body: false,
            headers: Default::default(),
            secrets: Vec::new(),
            max_concurrency: None,
            rate_limit: None,
            ordered: false,
            breaker: None,
        }
    }

    #[test]
    fn a_stored_delivery_is_pushed_with_its_target_offered_or_left_for_a_claim() {
        let mut room = Room(0, Vec::new(), Vec::new());
        let event_id = EventId::from("evt_1");
        let event = EventBody {
            id: &event_id,
            payload: "{}".into(),
        };
        let ep = EndpointId::from("ep_1");
        let stored = |place, delivery, endpoints_seen| Stored {
            place,
            delivery: DeliveryId(delivery),
            endpoint: &ep,
            endpoints_seen,
        };
        let read = || Ok::<_, &str>(Arc::new(target_of(&ep)));
        let never_read = || -> Result<Arc<crate::endpoint::Target>, &str> {
            panic!("only a leased delivery needs its target")
        };
        let mut handing = Handing {
            reservation: &mut room,
            event: &event,
        };
        let h = Some(&mut handing);
        assert_eq!(
            take_stored(stored(Place::Leased(99), 1, Some(3)), h, read),
            Ok(false)
        );
        for (delivery, seen) in [(2, Some(3)), (3, None)] {
            let taken = take_stored(
                stored(Place::Offered(7), delivery, seen),
                Some(&mut handing),
                never_read,
            );
            assert_eq!(taken, Ok(false));
        }
        for place in [Place::Held, Place::Waiting] {
            let taken = take_stored(stored(place, 4, None), Some(&mut handing), never_read);
            assert_eq!(taken, Ok(false));
        }
        let due = take_stored(stored(Place::Due, 5, None), Some(&mut handing), never_read);
        assert_eq!(due, Ok(true), "due, and neither handed nor offered");
        assert_eq!(
            take_stored(stored(Place::Due, 6, None), None, never_read),
            Ok(true)
        );
        let unread = take_stored(
            stored(Place::Leased(99), 8, None),
            Some(&mut handing),
            || Err("no target"),
        );
        assert_eq!(unread, Err("no target"), "the write fails");
        let _ = handing;

        assert_eq!(room.1.len(), 1);
        let pushed = &room.1[0];
        assert_eq!((pushed.delivery_id, pushed.attempt), (DeliveryId(1), 1));
        assert_eq!((&pushed.event_id, &*pushed.payload), (&event_id, "{}"));
        assert_eq!(*pushed.endpoint, target_of(&ep));
        let offered: Vec<_> = room.2.iter().map(|o| (o.id, o.carried.clone())).collect();
        let carried = Carried {
            event_id: event_id.clone(),
            payload: "{}".into(),
            endpoint_id: ep.clone(),
            until: 7,
            endpoints_seen: 3,
        };
        assert_eq!(
            offered,
            [(DeliveryId(2), Some(carried)), (DeliveryId(3), None)],
            "carried whole when the store counts endpoints' changes, else named"
        );
    }

    #[test]
    fn a_replay_to_a_named_endpoint_ignores_its_filters() {
        let subs = [
            sub("a", false, false, &["ch_9"]),
            sub("b", false, false, &[]),
        ];
        let named = replay_to(&subs, Some(&EndpointId::from("a")));
        assert_eq!(named.len(), 1);
        assert!(named[0].channel_ids.is_empty());
        assert_eq!(replay_to(&subs, None), subs.to_vec());
        assert!(replay_to(&subs, Some(&EndpointId::from("zz"))).is_empty());
    }
}
