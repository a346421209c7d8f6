//! The Kubernetes side of the daemon: client construction, a slim Node type for the watcher,
//! and the status-subresource writes (annotations with a resourceVersion precondition, the
//! NetworkUnavailable condition).

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::pure::attribution::FIELD_MANAGER;
use super::pure::node::SlimNode;
use super::slim_list::SlimNodeListLayer;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config (no --kubeconfig-file or --kube-api-url given): {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("invalid --kube-api-url {url:?}: {detail}")]
    ApiUrl { url: String, detail: String },
    #[error("build Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("{op} node {node}: {source}")]
    Api {
        op: &'static str,
        node: String,
        source: kube::Error,
    },
}

impl KubeError {
    /// The HTTP status code when the API server answered with a Status object.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            KubeError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }
}

/// What a client's Node list responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLists {
    /// Slimmed as they stream in: only what [`SlimNode`] decodes (the daemon).
    Slim,
    /// As the API server sent them (`flanneld diagnose` reads managedFields).
    Full,
}

/// Builds the client like upstream's `BuildConfigFromFlags(kubeApiUrl, kubeconfig)`: a
/// kubeconfig file when given (with the URL overriding its server), else the URL alone, else
/// the in-cluster service account.
pub async fn build_client(
    kubeconfig_file: Option<&Path>,
    api_url: Option<&str>,
    lists: NodeLists,
) -> Result<Client, KubeError> {
    let url = api_url
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<http::Uri>().map_err(|e| KubeError::ApiUrl {
                url: u.to_string(),
                detail: e.to_string(),
            })
        })
        .transpose()?;
    let mut config = match (kubeconfig_file, &url) {
        (Some(path), _) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        (None, Some(url)) => Config::new(url.clone()),
        (None, None) => Config::incluster()?,
    };
    if let Some(url) = url {
        config.cluster_url = url;
    }
    // Fail fast on a dead API server; watches carry their own server-side timeout.
    config.connect_timeout = Some(Duration::from_secs(5));
    // Node list pages are slimmed as they stream in (see slim_list.rs): kube-rs would hold
    // each page's full body, twice, while decoding it.
    if lists == NodeLists::Full {
        return Client::try_from(config).map_err(KubeError::Client);
    }
    let builder = kube::client::ClientBuilder::try_from(config).map_err(KubeError::Client)?;
    Ok(builder.with_layer(&SlimNodeListLayer).build())
}

/// `spec.nodeName` of pod `namespace/name` (`None` while it has none): how a DaemonSet pod
/// given only POD_NAME and POD_NAMESPACE learns its node.
pub async fn node_of_pod(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, kube::Error> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    Ok(pod.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()))
}

/// Writes to `nodes/NAME/status` — the only write upstream's ClusterRole grants.
#[derive(Clone)]
pub struct NodeStatusWriter {
    nodes: Api<SlimNode>,
    node: String,
}

impl NodeStatusWriter {
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            nodes: Api::all(client),
            node: node.to_string(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Names the operation and our Node in an API failure.
    fn api_error(&self, op: &'static str) -> impl FnOnce(kube::Error) -> KubeError + '_ {
        move |source| KubeError::Api {
            op,
            node: self.node.clone(),
            source,
        }
    }

    /// Reads our own Node fresh from the API server (after a 409, for example).
    pub async fn get(&self) -> Result<SlimNode, KubeError> {
        self.nodes
            .get(&self.node)
            .await
            .map_err(self.api_error("get"))
    }

    /// Our whole Node, `metadata.managedFields` included (the cached view drops them).
    pub async fn get_full(&self) -> Result<Node, KubeError> {
        Api::<Node>::all(self.nodes.clone().into_client())
            .get(&self.node)
            .await
            .map_err(self.api_error("get"))
    }

    /// Sends a JSON merge patch to the status subresource. The body is expected to carry
    /// `metadata.resourceVersion`, so a stale view yields 409 instead of a lost update.
    pub async fn merge_patch_status(
        &self,
        body: &serde_json::Value,
    ) -> Result<SlimNode, KubeError> {
        self.nodes
            .patch_status(&self.node, &our_params(), &Patch::Merge(body))
            .await
            .map_err(self.api_error("patch status of"))
    }

    /// Whether our Node already says `NetworkUnavailable=False` with reason FlannelIsUp (then a
    /// restart has nothing to write).
    pub async fn network_marked_available(&self) -> Result<bool, KubeError> {
        let node = Api::<Node>::all(self.nodes.clone().into_client())
            .get(&self.node)
            .await
            .map_err(self.api_error("get"))?;
        Ok(node
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_ == "NetworkUnavailable"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("FlannelIsUp")
            }))
    }

    /// Sends a strategic merge patch to the status subresource (conditions merge by `type`,
    /// so e.g. `NetworkUnavailable=False` leaves the kubelet's conditions alone).
    pub async fn patch_status_strategic(&self, body: &serde_json::Value) -> Result<(), KubeError> {
        Api::<Node>::all(self.nodes.clone().into_client())
            .patch_status(&self.node, &our_params(), &Patch::Strategic(body))
            .await
            .map(|_| ())
            .map_err(self.api_error("patch status conditions of"))
    }
}

/// Our writes carry upstream flanneld's field manager name, so managedFields name both alike
/// and attribution knows which entries are ours.
fn our_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_api_url_is_a_clear_error() {
        let err = match build_client(None, Some("http://[::1"), NodeLists::Slim).await {
            Err(e) => e,
            Ok(_) => panic!("accepted a broken URL"),
        };
        assert!(err.to_string().contains("--kube-api-url"), "{err}");
    }
}
