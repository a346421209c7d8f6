//! The harness itself: namespaces appear, are isolated, and vanish on drop (also on panic).

use crate::harness::*;
use std::path::Path;

#[test]
fn namespace_is_created_and_removed_on_drop() {
    let ns = netns("h");
    let path = ns.path();
    assert!(path.exists());
    let links = ip_json(&ns, &["link", "show"]);
    let names: Vec<_> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["lo"], "a fresh namespace holds only lo");
    drop(ns);
    assert!(!path.exists(), "namespace survived its guard");
}

#[test]
fn namespace_is_removed_after_a_panic() {
    let path = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let ns = netns("p");
        *path.lock().unwrap() = Some(ns.path());
        panic!("boom");
    });
    assert!(result.is_err());
    let path = path.lock().unwrap().clone().unwrap();
    assert!(!Path::new(&path).exists(), "namespace leaked after panic");
}

#[test]
fn veth_pair_connects_two_namespaces() {
    let a = netns("va");
    let b = netns("vb");
    veth_between(&a, "ua", "192.0.2.1/24", &b, "ub", "192.0.2.2/24");
    let out = a.exec("ping", &["-c1", "-W2", "192.0.2.2"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn helper_thread_runs_inside_the_namespace() {
    let ns = netns("t");
    add_veth(&ns, "probe0", "probe1");
    let file = ns.open().unwrap();
    let inside = file
        .run(|| {
            std::fs::read_dir("/sys/class/net").is_ok()
                && std::path::Path::new("/proc/self/net/dev").exists()
        })
        .unwrap();
    assert!(inside);
    let dev = file
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
        .unwrap();
    assert!(
        dev.contains("probe0"),
        "helper thread did not see the namespace's links: {dev}"
    );
    let own = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    assert!(
        !own.contains("probe0"),
        "the test thread itself must not have moved"
    );
}

#[test]
fn run_in_the_callers_own_namespace_stays_on_the_calling_thread() {
    let ns = netns("s");
    let file = ns.open().unwrap();
    let caller = std::thread::current().id();
    // From a thread inside the namespace: no helper thread.
    let same = file
        .run({
            let file = ns.open().unwrap();
            move || {
                let me = std::thread::current().id();
                let nested = file.run(move || std::thread::current().id()).unwrap();
                (me, nested)
            }
        })
        .unwrap();
    assert_ne!(
        same.0, caller,
        "a foreign namespace still needs a helper thread"
    );
    assert_eq!(same.1, same.0, "already inside: ran on the same thread");
    // The test thread's own namespace (not `ns`): also direct.
    let home = flannel_rs::netns::NetnsFile::current().unwrap();
    assert_eq!(home.run(|| std::thread::current().id()).unwrap(), caller);
}
