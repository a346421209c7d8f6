//! Back after an API outage: the test API server goes away for ~10 s and comes back with its
//! history compacted (every daemon's watch gets 410 Gone); a Node created right then must be
//! programmed by every running daemon quickly. Prints the time from the API's return to each
//! daemon's route; asserts only a generous bound.

use std::time::{Duration, Instant};

use frs_testsupport::kube_testserver::LogFilter;
use frs_testsupport::lab::{Flanneld, peer_annotations};

use crate::daemon_control::{FLANNELD, lab};

const DAEMONS: u8 = 3;

#[test]
fn after_an_outage_with_compacted_history_every_daemon_programs_a_new_node_quickly() {
    let rounds: u8 = std::env::var("FRS_OUTAGE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let lab = lab("out1");
    let mut hosts = Vec::new();
    let mut daemons: Vec<Flanneld> = Vec::new();
    for k in 1..=DAEMONS {
        let host = lab.add_host(&format!("out1-n{k}"), k).unwrap();
        lab.create_node(
            &format!("n{k}"),
            &format!("10.244.{k}.0/24"),
            host.address,
            Default::default(),
        )
        .unwrap();
        hosts.push(host);
    }
    for (i, host) in hosts.iter().enumerate() {
        let d = lab
            .start_flanneld(FLANNELD, host, &format!("n{}", i + 1), &[])
            .unwrap();
        daemons.push(d);
    }
    for d in &mut daemons {
        d.wait_ready(Duration::from_secs(30)).unwrap();
    }

    let mut all = Vec::new();
    for round in 0..rounds {
        let k = 100 + round;
        let (name, cidr) = (format!("late{k}"), format!("10.244.{k}.0/24"));
        let ip = lab.switch.address(k);
        let via = format!("via 10.244.{k}.0 dev flannel.1");

        lab.server.outage(Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        // While the API is away a Node changes (one flannel ignores: no podCIDR in the
        // Network) and the history goes: every resume from before gets 410 Gone.
        lab.server
            .generate_nodes(&serde_json::json!({
                "count": 1, "prefix": format!("outage{round}-"), "flannelAnnotations": false
            }))
            .unwrap();
        let compacted = lab.server.compact_history().unwrap();
        // The API's return is when the create first succeeds (retried every 20 ms).
        let started = Instant::now();
        loop {
            match lab.create_node(
                &name,
                &cidr,
                ip,
                peer_annotations(&format!("0e:00:00:00:01:{k:02x}"), &ip.to_string()),
            ) {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "API not back: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let returned = Instant::now();
        let return_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut pending: Vec<usize> = (0..hosts.len()).collect();
        let mut took = vec![Duration::ZERO; hosts.len()];
        while !pending.is_empty() {
            pending.retain(|&i| {
                let programmed = hosts[i]
                    .ns
                    .ip(&["route", "show", &cidr])
                    .is_ok_and(|o| o.contains(&via));
                if programmed {
                    took[i] = returned.elapsed();
                }
                !programmed
            });
            assert!(
                returned.elapsed() < Duration::from_secs(15),
                "round {round}: daemons {pending:?} did not program {name} within 15 s of the API's return:\n{}",
                daemons[pending[0]].log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let slowest = took.iter().max().copied().unwrap_or_default();
        // Every daemon had to re-list: its resume was answered with 410.
        let lists = lab
            .server
            .request_log(&LogFilter {
                verb: Some("list".into()),
                identity: Some("flannel".into()),
                ..LogFilter::default()
            })
            .unwrap()
            .into_iter()
            .filter(|e| e.time_ms + 100 >= return_ms && e.path.starts_with("/api/v1/nodes"))
            .count();
        assert!(
            lists >= hosts.len(),
            "round {round}: {lists} node lists after the return (compacted at {compacted})"
        );
        println!(
            "round {round}: new node programmed after the API's return in {:?} (slowest {slowest:?})",
            took.iter()
                .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
        );
        all.push(slowest);
        for d in &mut daemons {
            assert!(d.is_running(), "daemon exited:\n{}", d.log());
        }
    }
    all.sort();
    println!(
        "median over {rounds} round(s) of the slowest daemon: {:.0} ms",
        all[all.len() / 2].as_secs_f64() * 1000.0
    );
}
