//! The server through kube-rs, the client flanneld uses: paginated lists, the runtime watcher
//! (bookmarks, 410 → re-list, streaming lists), conflicts, subresource rules and RBAC.

use std::time::Duration;

use frs_testsupport::kube_testserver::{Fault, LogFilter, TestServerOptions};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;

use crate::common::*;

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn list_in_pages_with_limit_and_continue() {
    let server = spawn_nodes(23);
    let nodes: Api<Node> = Api::all(default_client(&server, "admin").await);
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(5);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = nodes.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|n| n.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(names.len(), 23);
    assert_eq!(names.first().unwrap(), "node-00000");
    assert_eq!(names.last().unwrap(), "node-00022");
    let labelled = nodes
        .list(&ListParams::default().labels("kubernetes.io/hostname=node-00007"))
        .await
        .unwrap();
    assert_eq!(labelled.items.len(), 1);
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Result<Event<Node>, watcher::Error>>;

/// Polls the watcher in the background (as a controller would) and forwards its items.
fn forward(api: Api<Node>, cfg: watcher::Config) -> (Events, tokio::task::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut stream = watcher::watcher(api, cfg).boxed();
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    (rx, task)
}

async fn next_item(rx: &mut Events) -> Result<Event<Node>, watcher::Error> {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("watcher item in time")
        .expect("watcher stream continues")
}

async fn next_event(rx: &mut Events) -> Event<Node> {
    next_item(rx).await.expect("watcher event is not an error")
}

/// Skips to the end of an initial listing, returning the names listed.
async fn init_done(rx: &mut Events) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        match next_event(rx).await {
            Event::Init => names.clear(),
            Event::InitApply(n) => names.push(n.metadata.name.unwrap()),
            Event::InitDone => return names,
            other => panic!("unexpected event during init: {other:?}"),
        }
    }
}

#[tokio::test]
async fn watcher_lists_in_pages_then_relists_after_410() {
    let server = spawn_nodes(7);
    let c = default_client(&server, "admin").await;
    let nodes: Api<Node> = Api::all(c.clone());
    let (mut rx, task) = forward(nodes.clone(), watcher::Config::default().page_size(3));
    assert_eq!(init_done(&mut rx).await.len(), 7);
    let list_log = server
        .request_log(&LogFilter {
            verb: Some("list".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(list_log.len(), 3, "7 nodes in pages of 3");
    assert!(list_log[1].path.contains("continue="));
    nodes
        .patch(
            "node-00003",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"w": "1"}}})),
        )
        .await
        .unwrap();
    match next_event(&mut rx).await {
        Event::Apply(n) => assert_eq!(n.metadata.name.as_deref(), Some("node-00003")),
        other => panic!("expected Apply, got {other:?}"),
    }

    // Cut the watch and hold the reconnect back while a write happens and history is dropped:
    // the resume point is then gone, the server answers 410 and the watcher must re-list.
    server
        .inject_fault(
            &Fault::latency(Duration::from_millis(800))
                .verb("watch")
                .times(1),
        )
        .unwrap();
    server.close_watches().unwrap();
    nodes
        .patch(
            "node-00004",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"w": "2"}}})),
        )
        .await
        .unwrap();
    server.compact_history().unwrap();
    match next_item(&mut rx).await {
        Err(e) => assert!(
            e.to_string().contains("410") || e.to_string().to_lowercase().contains("expired"),
            "{e}"
        ),
        Ok(other) => panic!("expected the 410 watch error, got {other:?}"),
    }
    let relisted = init_done(&mut rx).await;
    assert_eq!(relisted.len(), 7);
    let n4 = nodes.get("node-00004").await.unwrap();
    assert_eq!(n4.metadata.labels.unwrap()["w"], "2");
    let watches = server
        .request_log(&LogFilter {
            verb: Some("watch".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        watches
            .iter()
            .all(|e| e.path.contains("allowWatchBookmarks=true"))
    );
    assert_eq!(
        server
            .request_log(&LogFilter {
                verb: Some("list".into()),
                ..Default::default()
            })
            .unwrap()
            .len(),
        6,
        "a second paginated list after the 410"
    );
    task.abort();
}

#[tokio::test]
async fn watcher_resumes_from_bookmark_resource_version() {
    let server = spawn_nodes(2);
    let c = default_client(&server, "admin").await;
    let nodes: Api<Node> = Api::all(c.clone());
    nodes
        .patch(
            "node-00000",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"watched": "yes"}}})),
        )
        .await
        .unwrap();
    let (mut rx, task) = forward(
        nodes.clone(),
        watcher::Config::default().labels("watched=yes"),
    );
    assert_eq!(init_done(&mut rx).await, ["node-00000"]);
    server.wait_for_watches(1, Duration::from_secs(10)).unwrap();
    // A write the watcher does not see (filtered), then a bookmark carrying its revision.
    let unseen = nodes
        .patch(
            "node-00001",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"other": "1"}}})),
        )
        .await
        .unwrap();
    let unseen_rv = unseen.metadata.resource_version.unwrap();
    assert_eq!(server.bookmark().unwrap().to_string(), unseen_rv);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let since = server.reset_request_log().unwrap();
    server.close_watches().unwrap();
    nodes
        .patch(
            "node-00000",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"n": "2"}}})),
        )
        .await
        .unwrap();
    match next_event(&mut rx).await {
        Event::Apply(n) => assert_eq!(n.metadata.labels.unwrap()["n"], "2"),
        other => panic!("expected Apply, got {other:?}"),
    }
    let watches = server
        .request_log(&LogFilter {
            since: Some(since),
            verb: Some("watch".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(!watches.is_empty());
    assert!(
        watches[0]
            .path
            .contains(&format!("resourceVersion={unseen_rv}")),
        "resumed from the bookmark: {}",
        watches[0].path
    );
    task.abort();
}

#[tokio::test]
async fn watcher_streaming_list_uses_initial_events() {
    let server = spawn_nodes(4);
    let nodes: Api<Node> = Api::all(default_client(&server, "flannel").await);
    let (mut rx, task) = forward(nodes, watcher::Config::default().streaming_lists());
    assert_eq!(init_done(&mut rx).await.len(), 4);
    task.abort();
    let log = server
        .request_log(&LogFilter {
            verb: Some("watch".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        log[0].path.contains("sendInitialEvents=true"),
        "{}",
        log[0].path
    );
    assert!(
        server
            .request_log(&LogFilter {
                verb: Some("list".into()),
                ..Default::default()
            })
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn stale_resource_version_conflicts_through_kube() {
    let server = spawn_nodes(1);
    let nodes: Api<Node> = Api::all(default_client(&server, "admin").await);
    let stale = nodes.get("node-00000").await.unwrap();
    nodes
        .patch(
            "node-00000",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"first": "1"}}})),
        )
        .await
        .unwrap();
    let stale_rv = stale.metadata.resource_version.clone().unwrap();
    let err = api_error(
        nodes
            .patch(
                "node-00000",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"resourceVersion": stale_rv, "annotations": {"second": "1"}}})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let err = api_error(
        nodes
            .replace("node-00000", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    // Without a resourceVersion the stale copy overwrites (the lost-update incident).
    let mut unconditional = stale.clone();
    unconditional.metadata.resource_version = None;
    let replaced = nodes
        .replace("node-00000", &PostParams::default(), &unconditional)
        .await
        .unwrap();
    assert!(!replaced.metadata.annotations.unwrap().contains_key("first"));
}

#[tokio::test]
async fn status_subresource_and_rbac_through_kube() {
    let server = spawn(TestServerOptions {
        nodes: 1,
        ..Default::default()
    });
    let admin: Api<Node> = Api::all(default_client(&server, "admin").await);
    let flannel: Api<Node> = Api::all(default_client(&server, "flannel").await);
    let pp = PatchParams::default();
    let annotate = Patch::Strategic(
        json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "10.0.0.1"}}, "spec": {"unschedulable": true}}),
    );
    let err = api_error(
        flannel
            .patch("node-00000", &pp, &annotate)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    let n = flannel
        .patch_status("node-00000", &pp, &annotate)
        .await
        .unwrap();
    assert_eq!(
        n.metadata.annotations.unwrap()["flannel.alpha.coreos.com/public-ip"],
        "10.0.0.1"
    );
    assert_eq!(
        n.spec.unwrap().unschedulable,
        None,
        "spec unchanged via /status"
    );
    let status_change =
        Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
    let n = admin
        .patch("node-00000", &pp, &status_change)
        .await
        .unwrap();
    assert_eq!(
        n.status.unwrap().conditions.unwrap()[0].status,
        "True",
        "status unchanged via main resource"
    );
    let err = api_error(
        flannel
            .delete("node-00000", &Default::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);
    let all: Vec<Node> = watcher::watcher(flannel, watcher::Config::default())
        .applied_objects()
        .take(1)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}
