//! The storage contract: what every storage backend must do, written once against the
//! domain's storage traits (fan-out, dedup, claims and leases, retries and outcomes,
//! holding and releasing, device queues, presence, retention and purges, revisions, the
//! walls between accounts, alerts and incidents, sessions, connectors).
//!
//! A backend runs the whole suite from a test file of its own:
//!
//! ```text
//! async fn fixture() -> merpati_store_contract::Fixture { /* a fresh, empty store */ }
//! merpati_store_contract::contract_suite!(fixture);
//! ```
//!
//! Each case gets a fresh, empty store and passes time in explicitly, as the storage
//! traits take it: nothing sleeps.

use std::any::Any;

use merpati_domain::SharedStore;

pub mod cases;
pub mod support;

/// A fresh store, and whatever must live as long as it (a temporary directory, a
/// database server's schema).
pub struct Fixture {
    pub store: SharedStore,
    _keep: Box<dyn Any + Send>,
}

impl Fixture {
    pub fn new(store: SharedStore, keep: impl Any + Send) -> Fixture {
        Fixture {
            store,
            _keep: Box::new(keep),
        }
    }

    pub async fn close(self) {
        self.store.close().await;
    }
}

/// One `#[tokio::test]` per case of the contract, each on a store from `$fixture()`.
#[macro_export]
macro_rules! contract_suite {
    ($fixture:path) => {
        $crate::contract_cases!(
            $fixture;
            fanout::an_event_goes_to_every_matching_endpoint_and_no_other,
            fanout::a_disabled_endpoint_s_deliveries_are_held,
            fanout::replay_and_resend_make_new_deliveries_of_the_same_event,
            dedup::a_resent_item_is_one_event_and_a_reused_rid_refuses_the_batch,
            dedup::integer_and_string_rids_never_collide,
            dedup::the_system_id_only_grows,
            claims::a_claim_leases_until_the_lease_ends,
            claims::a_takeover_voids_the_leases_and_what_lanes_parked,
            claims::handed_over_deliveries_are_leased_once_committed_and_room_comes_back_otherwise,
            claims::offered_deliveries_are_read_while_the_offer_holds_then_claimed,
            claims::offered_targets_are_as_new_as_the_offering_write_saw,
            claims::what_a_claim_leased_is_read_back_by_when_it_was_made,
            claims::parked_deliveries_wait_until_taken_back,
            claims::a_kept_breaker_goes_to_the_next_owner_and_only_the_owner_keeps_one,
            claims::a_fenced_out_success_leaves_the_failing_streak,
            outcomes::a_retry_is_due_at_its_time_and_every_attempt_is_logged,
            outcomes::an_attempt_recorded_twice_is_logged_once,
            outcomes::an_endpoint_answering_410_is_disabled_and_the_others_are_told,
            outcomes::an_endpoint_failing_too_long_is_disabled,
            outcomes::a_success_ends_the_failing_streak,
            outcomes::an_endpoint_s_attempts_are_tallied_by_minute_for_a_day,
            queues::a_device_queue_goes_one_at_a_time_in_order,
            queues::enabling_releases_held_deliveries_and_each_queue_from_its_earliest,
            queues::switching_ordering_off_lets_the_waiting_go,
            queues::a_recover_job_sends_failed_deliveries_again_in_chunks,
            queues::a_gone_nodes_job_is_taken_up_from_where_it_was,
            presence::announcements_record_periods_and_go_to_subscribers,
            presence::blips_and_engine_reports_are_recorded_and_deleted_devices_skipped,
            presence::history_is_read_by_device_channel_and_business,
            presence::any_node_takes_the_next_step_of_a_device,
            presence::a_restart_forgets_links_and_gives_every_device_up_a_full_lease,
            retention::old_events_go_unless_a_delivery_still_owes_them,
            retention::deleted_endpoints_and_accounts_go_a_chunk_at_a_time,
            revisions::an_update_applies_only_at_the_revision_it_was_read,
            revisions::accounts_are_walls,
            alerts::rules_notifiers_and_windows_are_the_account_s_at_their_revision,
            alerts::the_engine_keeps_its_due_times_and_commits_incidents_whole,
            alerts::an_alert_write_that_fails_leaves_nothing,
            alerts::an_incident_is_kept_only_at_the_revision_it_was_read,
            alerts::senders_are_counted_once_within_their_window,
            alerts::drops_count_in_the_order_they_were_announced,
            alerts::trackers_and_devices_are_read_many_at_once,
            alerts::many_devices_down_in_one_run_join_one_incident,
            alerts::a_device_down_and_up_within_one_run_leaves_nothing_to_fire,
            sessions::a_session_lives_as_long_as_its_key_and_its_time,
            sessions::a_key_grants_what_it_was_made_for_until_it_expires,
            limits::an_account_gets_no_more_than_its_caps,
            audit::the_audit_trail_is_each_account_s_newest_first_until_pruned,
            cluster::nodes_hold_leases_and_join_beside_each_other_only_where_work_is_shared,
            cluster::slots_change_hands_only_when_free_and_each_time_with_a_new_epoch,
            connectors::connectors_are_the_account_s_checked_and_found_by_id_with_live_secrets
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! contract_cases {
    ($fixture:path; $($module:ident :: $case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture().await;
                // The cases run as one node holding every slot, from before any write.
                $crate::support::fence(&fixture.store).await;
                $crate::cases::$module::$case(&fixture.store).await;
                fixture.close().await;
            }
        )*
    };
}
