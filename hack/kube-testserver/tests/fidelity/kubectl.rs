//! kubectl (Debian's kubernetes-client) against the server: discovery, server-side printing,
//! annotate/label/patch of every type, watch and delete. kubectl runs with a per-run HOME and
//! an explicit --kubeconfig, never ~/.kube.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use frs_testsupport::kube_testserver::{KubeTestServer, LogFilter};
use serde_json::Value;

use crate::common::*;

const KUBECTL: &str = "/usr/bin/kubectl";

pub fn kubectl(server: &KubeTestServer, identity: &str, args: &[&str]) -> Output {
    assert!(
        Path::new(KUBECTL).exists(),
        "kubectl not found at {KUBECTL}: install Debian's kubernetes-client package"
    );
    Command::new(KUBECTL)
        .env("HOME", server.dir())
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(server.kubeconfig(identity).unwrap())
        .arg("--cache-dir")
        .arg(server.dir().join("kubectl-cache"))
        .args(args)
        .output()
        .expect("kubectl runs")
}

#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn node_json(server: &KubeTestServer, name: &str) -> Value {
    serde_json::from_str(&ok(kubectl(
        server,
        "admin",
        &["get", "node", name, "-o", "json"],
    )))
    .unwrap()
}

#[tokio::test]
async fn kubectl_get_and_get_json() {
    let server = spawn_nodes(3);
    let table = ok(kubectl(&server, "admin", &["get", "nodes"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("node-00000") && lines[1].contains("Ready"),
        "{table}"
    );
    let list: Value = serde_json::from_str(&ok(kubectl(
        &server,
        "admin",
        &["get", "nodes", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    let one = node_json(&server, "node-00002");
    assert_eq!(one["kind"], "Node");
    assert_eq!(one["spec"]["podCIDR"], "10.128.2.0/24");
    let err = kubectl(&server, "admin", &["get", "node", "nope"]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("NotFound"),
        "{err:?}"
    );
    let sel = ok(kubectl(
        &server,
        "admin",
        &[
            "get",
            "nodes",
            "-l",
            "kubernetes.io/hostname=node-00001",
            "-o",
            "name",
        ],
    ));
    assert_eq!(sel.trim(), "node/node-00001");
}

#[tokio::test]
async fn kubectl_annotate_label_and_patch_types() {
    let server = spawn_nodes(1);
    ok(kubectl(
        &server,
        "admin",
        &["annotate", "node", "node-00000", "example.com/a=1"],
    ));
    ok(kubectl(
        &server,
        "admin",
        &["label", "node", "node-00000", "team=blue"],
    ));
    let n = node_json(&server, "node-00000");
    assert_eq!(n["metadata"]["annotations"]["example.com/a"], "1");
    assert_eq!(n["metadata"]["labels"]["team"], "blue");
    // Without --overwrite kubectl refuses to change an existing value (client-side check).
    assert!(
        !kubectl(
            &server,
            "admin",
            &["label", "node", "node-00000", "team=red"]
        )
        .status
        .success()
    );
    ok(kubectl(
        &server,
        "admin",
        &["label", "node", "node-00000", "team-"],
    ));
    ok(kubectl(
        &server,
        "admin",
        &[
            "patch",
            "node",
            "node-00000",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
        ],
    ));
    ok(kubectl(
        &server,
        "admin",
        &[
            "patch",
            "node",
            "node-00000",
            "--type",
            "strategic",
            "-p",
            r#"{"metadata":{"labels":{"s":"1"}}}"#,
        ],
    ));
    ok(kubectl(
        &server,
        "admin",
        &[
            "patch",
            "node",
            "node-00000",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/j","value":"1"}]"#,
        ],
    ));
    let failed = kubectl(
        &server,
        "admin",
        &[
            "patch",
            "node",
            "node-00000",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/metadata/labels/j","value":"2"}]"#,
        ],
    );
    assert!(!failed.status.success());
    let n = node_json(&server, "node-00000");
    let labels = &n["metadata"]["labels"];
    assert!(labels.get("team").is_none());
    assert_eq!(
        (
            labels["m"].as_str(),
            labels["s"].as_str(),
            labels["j"].as_str()
        ),
        (Some("1"), Some("1"), Some("1"))
    );
    let log = server
        .request_log(&LogFilter {
            method: Some("PATCH".into()),
            ..Default::default()
        })
        .unwrap();
    let types: Vec<&str> = log
        .iter()
        .filter_map(|e| e.content_type.as_deref())
        .collect();
    assert!(
        types.contains(&MERGE) && types.contains(&STRATEGIC) && types.contains(&JSONPATCH),
        "{types:?}"
    );
    // The flannel identity may not patch nodes (only nodes/status).
    let denied = kubectl(
        &server,
        "flannel",
        &["annotate", "node", "node-00000", "x=1"],
    );
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{denied:?}"
    );
}

#[tokio::test]
async fn kubectl_watch_and_delete() {
    let server = spawn_nodes(2);
    let out_path = server.dir().join("watch.out");
    let out = std::fs::File::create(&out_path).unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _watch = KillOnDrop(
        Command::new(KUBECTL)
            .env("HOME", server.dir())
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(server.kubeconfig_admin())
            .args([
                "get",
                "nodes",
                "--watch",
                "-o",
                "custom-columns=NAME:.metadata.name,TEAM:.metadata.labels.team",
            ])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    server.wait_for_watches(1, Duration::from_secs(20)).unwrap();
    ok(kubectl(
        &server,
        "admin",
        &["label", "node", "node-00001", "team=green"],
    ));
    ok(kubectl(&server, "admin", &["delete", "node", "node-00000"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap();
        if text
            .lines()
            .any(|l| l.starts_with("node-00001") && l.contains("green"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watch output lacks the label change:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client(&server, "admin").await;
    assert_status(&get(&c, "/api/v1/nodes/node-00000").await, 404, "NotFound");
    let remaining = ok(kubectl(&server, "admin", &["get", "nodes", "-o", "name"]));
    assert_eq!(remaining.trim(), "node/node-00001");
    let del = server
        .request_log(&LogFilter {
            method: Some("DELETE".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(del.len(), 1);
    assert_eq!(del[0].code, 200);
}
