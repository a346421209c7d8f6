//! The underlay switch used by daemon tests, benchmarks and the local cluster.

use crate::harness::*;
use frs_testsupport::topology::Switch;

#[test]
fn hosts_on_a_switch_reach_each_other_and_nothing_else() {
    let sw = Switch::new("sw", [192, 168, 91]).unwrap();
    let a = sw.attach("ha", 1, 1500).unwrap();
    let b = sw.attach("hb", 2, 1500).unwrap();
    let out = a.ns.exec("ping", &["-c1", "-W2", "192.168.91.2"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let routes = ip_json(&a.ns, &["route", "show", "default"]);
    assert_eq!(
        routes.as_array().unwrap().len(),
        0,
        "a host must have no default route out"
    );
    let fwd = a.ns.exec("sysctl", &["-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");
    let mtu = ip_json(&b.ns, &["link", "show", "eth0"])[0]["mtu"].as_u64();
    assert_eq!(mtu, Some(1500));
}
