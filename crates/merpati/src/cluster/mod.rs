//! `GET /v1/cluster`: the nodes serving this database, with their leases and the slots
//! each holds (the admin's).

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
    /// The slots it holds (endpoints are hashed into 64): it alone attempts their
    /// endpoints' deliveries.
    pub slots: Vec<SlotView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SlotView {
    pub slot: u16,
    /// Raised each time the slot changes hands; every write of its owner names it.
    pub epoch: i64,
    /// When the node took it.
    #[serde(with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: i64,
}

#[utoipa::path(get, path = "/v1/cluster", tag = "server", security(("admin_token" = [])),
    responses((status = 200, description = "The nodes serving this database.", body = ClusterView)))]
async fn read(_: Admin, State(state): State<AppState>) -> ApiResult<Json<ClusterView>> {
    let (nodes, now) = state.store.cluster_nodes().await?;
    let slots = state.store.slot_leases().await?;
    Ok(Json(ClusterView {
        this_node: state.ownership.node(),
        now,
        nodes: nodes
            .into_iter()
            .map(|n| NodeView {
                slots: slots
                    .iter()
                    .filter(|s| s.node.as_deref() == Some(n.id.as_str()))
                    .map(|s| SlotView {
                        slot: s.slot,
                        epoch: s.epoch,
                        since: s.since,
                    })
                    .collect(),
                id: n.id,
                name: n.name,
                started_at: n.started_at,
                renewed_at: n.renewed_at,
                lease_until: n.lease_until,
            })
            .collect(),
    }))
}
