//! Boot images on the dashboard: the images page (what each image holds and how many nodes boot it) and the
//! form that changes a node's image after approval (`Fleet::set_node_image`, the same rule and audit row as
//! `PUT /api/v1/nodes/{node}/image`; it takes effect at the node's next boot).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use lbfleet_proto::UserRole;
use serde::Deserialize;

use super::error::{fleet_error_text, WebError};
use super::flash::redirect_with;
use super::format::time_text;
use super::page::{render, Chrome};
use super::session::{Posted, WebUser};
use crate::fleet::{node_key, FleetError};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/images", get(page))
        .route("/nodes/{id}/image", post(set_node_image))
}

#[derive(Debug, Clone)]
pub struct ImageView {
    pub name: String,
    pub is_default: bool,
    pub kernel: String,
    pub initrd: String,
    pub cmdline: String,
    pub kernel_version: String,
    pub agent_version: String,
    /// Nodes (not retired) that boot it: by name, or as the default.
    pub nodes: i64,
    pub added: String,
}

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesPage {
    p: Chrome,
    images: Vec<ImageView>,
}

pub async fn page(
    State(s): State<AppState>,
    user: WebUser,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let mut images = Vec::new();
    for (i, nodes) in s.fleet.images_in_use().await? {
        images.push(ImageView {
            nodes,
            added: time_text(i.created_at),
            kernel_version: i.kernel_version.unwrap_or_else(|| "-".into()),
            agent_version: i.agent_version.unwrap_or_else(|| "-".into()),
            name: i.name,
            is_default: i.is_default,
            kernel: i.kernel,
            initrd: i.initrd,
            cmdline: i.cmdline,
        });
    }
    render(&ImagesPage {
        p: Chrome::new(&user, &headers, "images", "Boot images".into()),
        images,
    })
}

#[derive(Deserialize)]
pub struct NodeImageForm {
    /// An image name; empty: the default image.
    #[serde(default)]
    image: String,
    #[serde(default)]
    back: String,
}

/// `POST /nodes/{id}/image`: the image the node boots from its next boot on.
pub async fn set_node_image(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Posted { user, form }: Posted<NodeImageForm>,
) -> Result<Response, WebError> {
    user.require(UserRole::Operator)?;
    let back = if form.back.is_empty() {
        format!("/nodes/{id}")
    } else {
        form.back
    };
    let image = Some(form.image.trim().to_owned()).filter(|i| !i.is_empty());
    match s
        .fleet
        .set_node_image(&user.actor(), &node_key(&id), image)
        .await
    {
        Ok(n) => {
            let what = match &n.image {
                Some(i) => format!("image {i}"),
                None => "the default image".into(),
            };
            tracing::info!(node = n.name, image = ?n.image, user = user.name, "node image set from the dashboard");
            Ok(redirect_with(
                &back,
                true,
                &format!("{} boots {what} from its next boot", n.name),
            ))
        }
        Err(FleetError::Store(e)) if !e.is_constraint() => Err(FleetError::Store(e).into()),
        Err(e) => Ok(redirect_with(&back, false, &fleet_error_text(&e).1)),
    }
}
