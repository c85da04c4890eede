//! Authentication and the bounds in front of it, shared by the API, the dashboard and HTTP boot: who is calling
//! (`principal`), sessions and password checks (`session`), the gate that bounds password checks
//! (`login_gate`), ending live streams with their session (`session_watch`), API-token "last used"
//! (`token_use`), per-request body and time bounds (`limits`), caps on long-lived requests per credential
//! (`streams`) and the boot-script rate limit (`limiter`).

pub mod limiter;
pub mod limits;
pub mod login_gate;
pub mod principal;
pub mod session;
pub mod session_watch;
pub mod streams;
pub mod token_use;

pub use limiter::BootScriptLimiter;
pub use login_gate::LoginGate;
pub use principal::{cookie, principal, Admin, AgentNode, Operator, Principal, Via, Viewer};
pub use session::{
    check_password, end_session, start_session, NewSession, CLEAR_SESSION_COOKIE, CSRF_HEADER,
    SESSION_COOKIE,
};
