//! The local testnet as a library call (`tm2_p2p::actors::testnet::run`): small runs on real
//! loopback TCP, each bounded by its convergence and delivery timeouts (no fixed sleeps), and
//! the open-file arithmetic that decides how many outbound peers a large run can afford.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use tm2_p2p::actors::testnet::{
    self, DEFAULT_MAX_OUTBOUND, TestnetConfig, TestnetError, node_ip, open_files_needed,
};

/// A small run: 6 nodes, 20 messages, bounded waits.
fn small() -> TestnetConfig {
    TestnetConfig {
        nodes: 6,
        messages: 20,
        converge_timeout: Duration::from_secs(30),
        delivery_timeout: Duration::from_secs(30),
        ..TestnetConfig::default()
    }
}

/// Whether this machine lets a process bind loopback IPs other than 127.0.0.1 (Linux does,
/// macOS does not without configuring aliases).
fn other_loopback_ips_bind() -> bool {
    std::net::TcpListener::bind((node_ip(0), 0)).is_ok()
}

#[actix::test]
async fn a_testnet_with_one_loopback_ip_per_node_converges_and_delivers_everything() {
    let report = testnet::run(small(), ()).await.unwrap();
    assert_eq!(report.spread_addresses, other_loopback_ips_bind());
    assert!(report.is_complete(), "{report}");
    assert_eq!(report.delivered, 20 * 5);
    assert!(report.peers.min >= 4, "{report}");
    if report.spread_addresses {
        assert!(
            report
                .to_string()
                .contains("127.0.0.1 (seed) and 127.0.1.1 to 127.0.6.1, one IP each"),
            "{report}"
        );
    }
}

#[actix::test]
async fn a_testnet_on_127_0_0_1_only_still_converges_and_delivers_everything() {
    let config = TestnetConfig {
        spread_addresses: false,
        ..small()
    };
    let report = testnet::run(config, ()).await.unwrap();
    assert!(!report.spread_addresses);
    assert!(report.is_complete(), "{report}");
    assert!(
        report.to_string().contains("6 (+1 seed), on 127.0.0.1\n"),
        "{report}"
    );
}

#[test]
fn every_node_gets_its_own_slash_24() {
    assert_eq!(node_ip(0).to_string(), "127.0.1.1");
    assert_eq!(node_ip(254).to_string(), "127.0.255.1");
    assert_eq!(node_ip(255).to_string(), "127.1.0.1");
    assert_eq!(node_ip(999).to_string(), "127.3.232.1");
    let subnets: std::collections::HashSet<[u8; 3]> = (0..testnet::MAX_NODES)
        .map(|i| {
            let o = node_ip(i).octets();
            [o[0], o[1], o[2]]
        })
        .collect();
    assert_eq!(subnets.len(), testnet::MAX_NODES);
    assert!(!subnets.contains(&[127, 0, 0]), "the seed's /24 is its own");
}

#[test]
fn the_outbound_target_is_lowered_to_fit_the_open_file_limit_or_the_run_is_refused() {
    let config = |nodes| TestnetConfig {
        nodes,
        ..TestnetConfig::default()
    };
    // 64 nodes keep TM2's 10 under a usual hard limit, not under a soft limit of 1024.
    assert_eq!(
        config(64).max_outbound_within(4096).unwrap(),
        DEFAULT_MAX_OUTBOUND
    );
    assert_eq!(config(64).max_outbound_within(1024).unwrap(), 4);
    // 1,000 nodes under a 20,000 limit: 10 outbound would need about 23,000 descriptors.
    assert!(open_files_needed(1000, 10) > 20_000);
    assert_eq!(config(1000).max_outbound_within(20_000).unwrap(), 8);
    assert!(open_files_needed(1000, 8) <= 20_000);
    assert_eq!(
        config(1000).max_outbound_within(u64::MAX).unwrap(),
        DEFAULT_MAX_OUTBOUND
    );
    // Never below the 4 peers convergence requires: a limit too low for that is an error.
    let err = config(1000).max_outbound_within(4096).unwrap_err();
    match &err {
        TestnetError::OpenFiles {
            nodes,
            needed,
            limit,
        } => assert_eq!(
            (*nodes, *needed, *limit),
            (1000, open_files_needed(1000, 4), 4096)
        ),
        other => panic!("expected OpenFiles, got {other:?}"),
    }
    assert!(err.to_string().contains("ulimit -n"), "{err}");
}

#[test]
fn a_thousand_nodes_are_allowed_and_more_are_not() {
    let config = |nodes| TestnetConfig {
        nodes,
        ..TestnetConfig::default()
    };
    assert_eq!(testnet::MAX_NODES, 1000);
    config(1000).validate().unwrap();
    assert!(config(1001).validate().is_err());
}
