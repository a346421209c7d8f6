//! Node list pages slimmed while they stream in.
//!
//! kube-rs reads a list response whole and then copies it twice (into one buffer, then into a
//! `String`) before decoding it: at 500 realistic (~16 KB) Nodes a page, that is ~24 MB held
//! for a page whose decoded [`SlimNode`]s take well under 1 MB — most of the daemon's start-up
//! peak. This layer sits under the client: as each chunk of a Node list response arrives, the
//! items are cut out of it ([`ListSplitter`]), decoded one by one as [`SlimNode`] (skipping
//! what flanneld never reads) and written back re-encoded, so what kube-rs buffers is the slim
//! page, and a full Node exists only one at a time. The list's shell (resourceVersion, continue
//! token) passes through unchanged, so kube-rs' watcher behaves exactly as before.
//!
//! The daemon lists Nodes only as [`SlimNode`]; watch responses (one event per line) and
//! single-object reads pass through untouched.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::pure::json_list::{ListSplitError, ListSplitter};
use super::pure::node::SlimNode;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The path of the cluster-wide Node collection.
const NODES_PATH: &str = "/api/v1/nodes";

/// Whether a request is a list (not a watch) of all Nodes.
fn is_node_list<B>(req: &Request<B>) -> bool {
    let uri = req.uri();
    req.method() == Method::GET
        && uri.path().trim_end_matches('/') == NODES_PATH
        && !uri
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1")
}

/// Rewrites one Node list item as the [`SlimNode`] it decodes to.
fn slim_item(item: &[u8], out: &mut Vec<u8>) -> Result<(), SlimListError> {
    let node: SlimNode = serde_json::from_slice(item).map_err(SlimListError::Item)?;
    serde_json::to_writer(out, &node).map_err(SlimListError::Item)
}

#[derive(Debug, thiserror::Error)]
pub enum SlimListError {
    #[error("node list response: {0}")]
    Split(#[from] ListSplitError),
    #[error("node list item: {0}")]
    Item(#[source] serde_json::Error),
}

/// The layer for `kube::client::ClientBuilder::with_layer`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SlimNodeListLayer;

impl<S> tower_layer::Layer<S> for SlimNodeListLayer {
    type Service = SlimNodeList<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SlimNodeList { inner }
    }
}

#[derive(Debug, Clone)]
pub struct SlimNodeList<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for SlimNodeList<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<SlimListBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let list = is_node_list(&req);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            // Errors (a Status object) and anything else pass through as they are.
            let slim = list && response.status() == StatusCode::OK;
            let (mut parts, body) = response.into_parts();
            if slim {
                parts.headers.remove(http::header::CONTENT_LENGTH);
            }
            Ok(Response::from_parts(
                parts,
                SlimListBody {
                    inner: body,
                    splitter: slim.then(ListSplitter::new),
                    done: false,
                },
            ))
        })
    }
}

/// A response body, slimmed on the way if it is a Node list.
#[derive(Debug)]
pub struct SlimListBody<B> {
    inner: B,
    /// `None`: passed through untouched.
    splitter: Option<ListSplitter>,
    done: bool,
}

impl<B> Body for SlimListBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    if let Some(s) = &this.splitter {
                        s.finish().map_err(|e| Box::new(SlimListError::Split(e)))?;
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Some(splitter) = this.splitter.as_mut() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                // Trailers: as they are.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            let mut out = Vec::new();
            if let Err(e) = splitter.feed(&data, &mut out, slim_item) {
                this.done = true;
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            // A chunk inside one item yields nothing yet: read on.
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.splitter.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.splitter {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A realistic Node as the API server sends it (the bulk flanneld skips included).
    fn full_node(name: &str, i: u32) -> serde_json::Value {
        serde_json::json!({
            "metadata": {
                "name": name,
                "uid": format!("uid-{i}"),
                "resourceVersion": format!("{}", 100 + i),
                "creationTimestamp": "2024-05-01T10:11:12Z",
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                "annotations": {
                    "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:01\"}",
                    "flannel.alpha.coreos.com/public-ip": format!("192.168.0.{i}"),
                    "node.alpha.kubernetes.io/ttl": "0",
                    "weird": "}]\"{[\\ \u{1F600}"
                },
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]
            },
            "spec": {"podCIDR": format!("10.244.{i}.0/24"), "podCIDRs": [format!("10.244.{i}.0/24")], "providerID": "x"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": format!("172.16.0.{i}")}, {"type": "Hostname", "address": name}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "images": (0..40)
                    .map(|k| serde_json::json!({"names": [format!("registry.example/image-{k}:v1.2.3")], "sizeBytes": 12345678}))
                    .collect::<Vec<_>>(),
                "nodeInfo": {"kubeletVersion": "v1.33.0"}
            }
        })
    }

    fn list_json() -> String {
        let mut deleting = full_node("c", 3);
        deleting["metadata"]["deletionTimestamp"] = "2024-05-02T00:00:00Z".into();
        serde_json::json!({
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "4242", "continue": "eyJ2IjoibWV0YSJ9"},
            "items": [full_node("a", 1), full_node("b", 2), deleting, {"metadata": {"name": "bare"}}]
        })
        .to_string()
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Page {
        metadata: serde_json::Value,
        items: Vec<SlimNode>,
    }

    async fn slimmed(text: &str, chunk: usize) -> Result<String, BoxError> {
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = text
            .as_bytes()
            .chunks(chunk)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        let slim = SlimListBody {
            inner: body,
            splitter: Some(ListSplitter::new()),
            done: false,
        };
        let bytes = slim.collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec())?)
    }

    #[tokio::test]
    async fn a_slimmed_page_decodes_to_the_same_slim_nodes_and_list_metadata() {
        let text = list_json();
        let want: Page = serde_json::from_str(&text).unwrap();
        for chunk in [1, 7, 100, 4096, text.len()] {
            let slim = slimmed(&text, chunk).await.unwrap();
            let got: Page = serde_json::from_str(&slim).unwrap();
            assert_eq!(got, want, "chunks of {chunk}");
            assert!(slim.len() < text.len() / 2, "{slim}");
            assert!(!slim.contains("managedFields") && !slim.contains("images"));
        }
        assert_eq!(want.items.len(), 4);
        assert!(want.items[2].metadata.deletion_timestamp.is_some());
    }

    #[tokio::test]
    async fn a_broken_page_is_an_error_not_a_shorter_list() {
        let text = list_json();
        let cut = &text[..text.len() - 40];
        assert!(slimmed(cut, 512).await.is_err());
        let bad_item = r#"{"kind":"NodeList","items":[{"metadata":{"name":5}}]}"#;
        assert!(slimmed(bad_item, 8).await.is_err());
    }

    #[test]
    fn only_lists_of_all_nodes_are_slimmed() {
        let req = |method: Method, uri: &str| {
            Request::builder().method(method).uri(uri).body(()).unwrap()
        };
        assert!(is_node_list(&req(
            Method::GET,
            "https://h:6443/api/v1/nodes?&limit=500"
        )));
        assert!(is_node_list(&req(Method::GET, "/api/v1/nodes")));
        assert!(is_node_list(&req(
            Method::GET,
            "/api/v1/nodes?limit=500&continue=abc"
        )));
        assert!(!is_node_list(&req(
            Method::GET,
            "/api/v1/nodes?&watch=true&resourceVersion=5"
        )));
        assert!(!is_node_list(&req(Method::GET, "/api/v1/nodes/self")));
        assert!(!is_node_list(&req(Method::PATCH, "/api/v1/nodes")));
        assert!(!is_node_list(&req(Method::GET, "/api/v1/pods")));
    }
}
