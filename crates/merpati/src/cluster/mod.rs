//! `GET /v1/cluster`: the nodes serving this database, with their leases (the admin's).

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::extract::Admin;
use crate::api::time::as_rfc3339;
use crate::api::{ApiResult, AppState};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read))
}

/// The nodes whose lease is live.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The node that answered.
    pub this_node: String,
    /// The database's time when it answered: leases are on its clock.
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub now: i64,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: String,
    /// `cluster.node_name`, or the host's name.
    pub name: String,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: i64,
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub renewed_at: i64,
    /// Until when the node holds its lease unless it renews it.
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub lease_until: i64,
}

#[utoipa::path(get, path = "/v1/cluster", tag = "server", security(("admin_token" = [])),
    responses((status = 200, description = "The nodes serving this database.", body = ClusterView)))]
async fn read(_: Admin, State(state): State<AppState>) -> ApiResult<Json<ClusterView>> {
    let (nodes, now) = state.store.cluster_nodes().await?;
    Ok(Json(ClusterView {
        this_node: state.node.to_string(),
        now,
        nodes: nodes
            .into_iter()
            .map(|n| NodeView {
                id: n.id,
                name: n.name,
                started_at: n.started_at,
                renewed_at: n.renewed_at,
                lease_until: n.lease_until,
            })
            .collect(),
    }))
}
