//! One macro per port that expands to one test per contract case, so an adapter's test file names
//! its fixture once and cannot leave a case out; a case the adapter's server cannot run says so
//! through [`crate::Capability`] and prints a `SKIPPED` line.
//!
//! Each macro takes the path of an async fn returning `Option<Fixture<_>>` (`None` when the test
//! server is not configured: the test then reports itself skipped, see [`crate::test_server`]).

#[doc(hidden)]
#[macro_export]
macro_rules! __contract_case {
    ($fixture:path, $case:ident, [$($needs:ident),*], |$f:ident| $call:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some($f) = $fixture().await else { return };
            if $f.skips(stringify!($case), &[$($crate::Capability::$needs),*]) {
                return;
            }
            $call.await;
            $f.finish().await;
        }
    };
}

/// The message bus: delivery order, headers, group offsets, start positions, unknown topics. The
/// fixture gives a topic with two partitions or more.
#[macro_export]
macro_rules! bus_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, bus_delivers_each_key_in_order_with_headers, [], |f| {
            $crate::bus_delivers_each_key_in_order_with_headers(f.port(), f.topic(), f.group())
        });
        $crate::__contract_case!($fixture, bus_resumes_a_group_from_its_committed_offsets, [], |f| {
            $crate::bus_resumes_a_group_from_its_committed_offsets(f.port(), f.topic(), f.group())
        });
        $crate::__contract_case!($fixture, bus_tells_where_each_partition_ends, [], |f| {
            $crate::bus_tells_where_each_partition_ends(f.port(), f.topic(), f.group())
        });
        $crate::__contract_case!($fixture, bus_start_positions_select_what_is_read, [OffsetLookup], |f| {
            $crate::bus_start_positions_select_what_is_read(f.port(), f.topic(), f.group())
        });
        $crate::__contract_case!($fixture, bus_refuses_unknown_topics, [], |f| $crate::bus_refuses_unknown_topics(
            f.port()
        ));
        $crate::__contract_case!($fixture, bus_poll_returns_empty_when_nothing_arrives, [], |f| {
            $crate::bus_poll_returns_empty_when_nothing_arrives(f.port(), f.topic(), f.group())
        });
    };
}

/// The consume loop on a bus: poison messages, retries, commits after the work, independent
/// partitions. The fixture gives a work topic (two partitions or more) and a dead-letter topic.
#[macro_export]
macro_rules! consumer_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, consumer_dead_letters_poison_intact_and_moves_on_in_order, [], |f| {
            $crate::consumer_dead_letters_poison_intact_and_moves_on_in_order(f.shared(), f.topic(), f.dead_letters())
        });
        $crate::__contract_case!(
            $fixture,
            consumer_retries_transient_failures_and_dead_letters_after_the_attempts,
            [],
            |f| $crate::consumer_retries_transient_failures_and_dead_letters_after_the_attempts(
                f.shared(),
                f.topic(),
                f.dead_letters()
            )
        );
        $crate::__contract_case!($fixture, consumer_dead_letters_are_listed_redriven_and_purged, [], |f| {
            $crate::consumer_dead_letters_are_listed_redriven_and_purged(f.shared(), f.topic(), f.dead_letters())
        });
        $crate::__contract_case!($fixture, consumer_retries_unfinished_records_and_never_dead_letters_them, [], |f| {
            $crate::consumer_retries_unfinished_records_and_never_dead_letters_them(
                f.shared(),
                f.topic(),
                f.dead_letters(),
            )
        });
        $crate::__contract_case!($fixture, consumer_commits_after_the_work_so_a_restart_resumes_after_it, [], |f| {
            $crate::consumer_commits_after_the_work_so_a_restart_resumes_after_it(
                f.shared(),
                f.topic(),
                f.dead_letters(),
            )
        });
        $crate::__contract_case!(
            $fixture,
            consumer_waits_out_an_unavailable_dependency_and_never_dead_letters,
            [],
            |f| $crate::consumer_waits_out_an_unavailable_dependency_and_never_dead_letters(
                f.shared(),
                f.topic(),
                f.dead_letters()
            )
        );
        $crate::__contract_case!($fixture, consumer_partitions_do_not_wait_for_each_other, [], |f| {
            $crate::consumer_partitions_do_not_wait_for_each_other(f.shared(), f.topic(), f.dead_letters())
        });
    };
}

#[macro_export]
macro_rules! event_store_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, event_store_reads_back_a_stream_in_order, [], |f| {
            $crate::event_store_reads_back_a_stream_in_order(f.port())
        });
        $crate::__contract_case!($fixture, event_store_rejects_a_stale_expected_version, [], |f| {
            $crate::event_store_rejects_a_stale_expected_version(f.port())
        });
        $crate::__contract_case!($fixture, event_store_lets_one_of_two_racing_appends_win, [UniqueIndex], |f| {
            $crate::event_store_lets_one_of_two_racing_appends_win(f.port())
        });
        $crate::__contract_case!($fixture, event_store_refuses_malformed_batches, [], |f| {
            $crate::event_store_refuses_malformed_batches(f.port())
        });
        $crate::__contract_case!($fixture, event_store_reads_everything_in_a_stable_order, [], |f| {
            $crate::event_store_reads_everything_in_a_stable_order(f.port())
        });
        $crate::__contract_case!($fixture, event_store_reads_a_stream_after_a_sequence, [], |f| {
            $crate::event_store_reads_a_stream_after_a_sequence(f.port())
        });
        $crate::__contract_case!($fixture, event_store_keeps_the_newest_snapshot_of_a_stream, [], |f| {
            $crate::event_store_keeps_the_newest_snapshot_of_a_stream(f.port())
        });
    };
}

#[macro_export]
macro_rules! ride_views_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, ride_views_only_move_forward, [], |f| $crate::ride_views_only_move_forward(
            f.port()
        ));
        $crate::__contract_case!($fixture, ride_views_take_a_batch_as_upserts_in_order, [], |f| {
            $crate::ride_views_take_a_batch_as_upserts_in_order(f.port())
        });
        $crate::__contract_case!($fixture, ride_views_page_a_party_s_rides_newest_first, [], |f| {
            $crate::ride_views_page_a_party_s_rides_newest_first(f.port())
        });
        $crate::__contract_case!($fixture, ride_views_list_the_rides_waiting_since_a_time, [], |f| {
            $crate::ride_views_list_the_rides_waiting_since_a_time(f.port())
        });
        $crate::__contract_case!($fixture, ride_views_count_waiting_rides_per_cell, [], |f| {
            $crate::ride_views_count_waiting_rides_per_cell(f.port())
        });
    };
}

#[macro_export]
macro_rules! user_views_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, user_views_store_profiles_and_credentials, [], |f| {
            $crate::user_views_store_profiles_and_credentials(f.port())
        });
    };
}

#[macro_export]
macro_rules! locator_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, locator_reserves_the_nearest_free_driver_within_the_radius, [], |f| {
            $crate::locator_reserves_the_nearest_free_driver_within_the_radius(f.port())
        });
        $crate::__contract_case!($fixture, locator_skips_excluded_and_offline_drivers, [], |f| {
            $crate::locator_skips_excluded_and_offline_drivers(f.port())
        });
        $crate::__contract_case!($fixture, locator_holds_expire_and_releases_free_drivers, [], |f| {
            $crate::locator_holds_expire_and_releases_free_drivers(f.port())
        });
        $crate::__contract_case!($fixture, locator_never_gives_one_driver_to_two_rides, [], |f| {
            $crate::locator_never_gives_one_driver_to_two_rides(f.port())
        });
        $crate::__contract_case!($fixture, locator_counts_available_drivers_per_cell, [], |f| {
            $crate::locator_counts_available_drivers_per_cell(f.port())
        });
        $crate::__contract_case!($fixture, locator_takes_location_pings_newest_first, [], |f| {
            $crate::locator_takes_location_pings_newest_first(f.port())
        });
        $crate::__contract_case!($fixture, locator_does_not_offer_drivers_whose_fix_is_stale, [], |f| {
            $crate::locator_does_not_offer_drivers_whose_fix_is_stale(f.port())
        });
        $crate::__contract_case!($fixture, locator_counts_the_drivers_online, [], |f| {
            $crate::locator_counts_the_drivers_online(f.port())
        });
    };
}

#[macro_export]
macro_rules! command_status_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, command_status_never_goes_back_to_pending, [], |f| {
            $crate::command_status_never_goes_back_to_pending(f.port())
        });
        $crate::__contract_case!($fixture, command_status_records_a_batch_in_order, [], |f| {
            $crate::command_status_records_a_batch_in_order(f.shared())
        });
        $crate::__contract_case!($fixture, command_status_wait_returns_once_final, [], |f| {
            $crate::command_status_wait_returns_once_final(f.shared())
        });
    };
}

#[macro_export]
macro_rules! idempotency_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, idempotency_replays_and_detects_mismatches, [], |f| {
            $crate::idempotency_replays_and_detects_mismatches(f.port())
        });
    };
}

#[macro_export]
macro_rules! timers_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, timers_fire_when_due_once_per_id, [], |f| {
            $crate::timers_fire_when_due_once_per_id(f.port())
        });
    };
}

#[macro_export]
macro_rules! limiter_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, limiter_admits_a_burst_then_spaces_requests, [], |f| {
            $crate::limiter_admits_a_burst_then_spaces_requests(f.port())
        });
        $crate::__contract_case!($fixture, limiter_admits_several_keys_only_when_every_one_admits, [], |f| {
            $crate::limiter_admits_several_keys_only_when_every_one_admits(f.port())
        });
        $crate::__contract_case!($fixture, limiter_locks_out_after_repeated_failures_and_forgets_on_success, [], |f| {
            $crate::limiter_locks_out_after_repeated_failures_and_forgets_on_success(f.port())
        });
    };
}

/// Projection generations: the catalogue's compare-and-swap, generations kept apart, and the
/// versioned views routing reads and writes as the catalogue says. The fixture gives a
/// [`GenerationStore`](ridehail_ports::GenerationStore) on a fresh database.
#[macro_export]
macro_rules! generations_suite {
    ($fixture:path) => {
        $crate::__contract_case!($fixture, catalogue_swaps_only_from_the_revision_read, [], |f| {
            $crate::catalogue_swaps_only_from_the_revision_read(f.shared())
        });
        $crate::__contract_case!($fixture, generations_keep_their_documents_apart, [], |f| {
            $crate::generations_keep_their_documents_apart(f.shared())
        });
        $crate::__contract_case!($fixture, versioned_views_follow_the_catalogue, [], |f| {
            $crate::versioned_views_follow_the_catalogue(f.shared())
        });
    };
}
