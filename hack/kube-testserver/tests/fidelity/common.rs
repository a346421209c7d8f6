//! Shared helpers: spawning the server, kube clients per identity, raw API calls and a
//! line reader for watch streams.

use std::time::Duration;

use bytes::Bytes;
use frs_testsupport::kube_testserver::{KubeTestServer, TestServerOptions};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::Value;

pub fn spawn(opts: TestServerOptions) -> KubeTestServer {
    KubeTestServer::spawn(env!("CARGO_BIN_EXE_kube-testserver"), opts)
        .expect("kube-testserver must start")
}

pub fn spawn_nodes(nodes: u32) -> KubeTestServer {
    spawn(TestServerOptions {
        nodes,
        ..Default::default()
    })
}

async fn config(server: &KubeTestServer, identity: &str) -> kube::Config {
    let path = server
        .kubeconfig(identity)
        .expect("identity has a kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig parses");
    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads")
}

/// A client that shows every response as sent: kube's default retry of 429/503/504 is off.
pub async fn client(server: &KubeTestServer, identity: &str) -> kube::Client {
    let mut cfg = config(server, identity).await;
    cfg.default_retry = false;
    kube::Client::try_from(cfg).expect("client builds")
}

/// A client configured as kube-rs configures it by default (retries included).
pub async fn default_client(server: &KubeTestServer, identity: &str) -> kube::Client {
    kube::Client::try_from(config(server, identity).await).expect("client builds")
}

/// A client without credentials.
pub async fn anonymous_client(server: &KubeTestServer) -> kube::Client {
    let mut cfg = config(server, "admin").await;
    cfg.default_retry = false;
    cfg.auth_info = Default::default();
    kube::Client::try_from(cfg).unwrap()
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.text)
    }
}

pub async fn call(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req
        .body(Body::from(body.unwrap_or("").as_bytes().to_vec()))
        .unwrap();
    send(client, req).await
}

/// `method path` with `body` as its JSON document.
pub async fn send_json(client: &kube::Client, method: &str, path: &str, body: &Value) -> Resp {
    call(
        client,
        method,
        path,
        Some("application/json"),
        Some(&body.to_string()),
    )
    .await
}

/// Sends `req` and reads the whole response.
pub async fn send(client: &kube::Client, req: http::Request<Body>) -> Resp {
    let resp = client.send(req).await.expect("request is sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        text,
        json,
    }
}

pub async fn get(client: &kube::Client, path: &str) -> Resp {
    call(client, "GET", path, None, None).await
}

pub async fn patch(client: &kube::Client, path: &str, ct: &str, body: &str) -> Resp {
    call(client, "PATCH", path, Some(ct), Some(body)).await
}

/// A JSON merge patch, the most common write in these tests.
pub async fn merge_patch(client: &kube::Client, path: &str, body: &str) -> Resp {
    patch(client, path, MERGE, body).await
}

/// Sets one label of the object at `path` by a merge patch.
pub async fn label(client: &kube::Client, path: &str, key: &str, value: &str) -> Resp {
    let body = serde_json::json!({"metadata": {"labels": {key: value}}});
    merge_patch(client, path, &body.to_string()).await
}

pub const MERGE: &str = "application/merge-patch+json";
pub const STRATEGIC: &str = "application/strategic-merge-patch+json";
pub const JSONPATCH: &str = "application/json-patch+json";

pub fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {obj}"))
}

/// Asserts a Status error with this code and reason.
#[track_caller]
pub fn assert_status(r: &Resp, code: u16, reason: &str) {
    assert_eq!(r.status, code, "{r:?}");
    assert_eq!(r.json["kind"], "Status", "{r:?}");
    assert_eq!(r.json["status"], "Failure", "{r:?}");
    assert_eq!(r.json["code"], code, "{r:?}");
    assert_eq!(r.json["reason"], reason, "{r:?}");
}

pub async fn create_node(client: &kube::Client, name: &str, labels: Value) -> Value {
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"seed": "1"}},
        "spec": {"podCIDR": "10.244.9.0/24", "podCIDRs": ["10.244.9.0/24"]},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                   "addresses": [{"type": "InternalIP", "address": "192.168.9.1"}, {"type": "Hostname", "address": name}]}
    });
    let r = send_json(client, "POST", "/api/v1/nodes", &body).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.json
}

/// A Node watch resuming after `rv`.
pub async fn watch_nodes_from(client: &kube::Client, rv: u64) -> WatchReader {
    WatchReader::open(
        client,
        &format!("/api/v1/nodes?watch=1&resourceVersion={rv}"),
    )
    .await
}

#[derive(Debug)]
pub enum Next {
    Event(Value),
    End,
    Timeout,
}

pub struct WatchReader {
    pub status: u16,
    pub headers: http::HeaderMap,
    body: Body,
    buf: Vec<u8>,
    ended: bool,
}

impl WatchReader {
    pub async fn open(client: &kube::Client, path: &str) -> WatchReader {
        let req = http::Request::get(path).body(Body::empty()).unwrap();
        let resp = client.send(req).await.expect("watch request is sent");
        WatchReader {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.into_body(),
            buf: Vec::new(),
            ended: false,
        }
    }

    pub async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Next::Event(serde_json::from_slice(&line).expect("watch line is JSON"));
            }
            if self.ended {
                assert!(self.buf.is_empty(), "partial line at end of watch");
                return Next::End;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => self.ended = true,
                Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let data: Bytes = data;
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    pub async fn expect_event(&mut self) -> Value {
        match self.next(Duration::from_secs(10)).await {
            Next::Event(v) => v,
            other => panic!("expected a watch event, got {other:?}"),
        }
    }

    /// Asserts nothing arrives for `d`.
    pub async fn expect_quiet(&mut self, d: Duration) {
        match self.next(d).await {
            Next::Timeout => {}
            other => panic!("expected no event, got {other:?}"),
        }
    }
}
