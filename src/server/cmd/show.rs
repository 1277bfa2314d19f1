//! SHOW: the settings clients of a walsender ask for (wal_segment_size, server_version_num,
//! data_directory_mode …), the upstream's reported parameters for the rest; an unknown name
//! fails as PostgreSQL's "unrecognized configuration parameter".

use crate::error::codes;
use crate::protocol::backend::{ErrorFields, TEXT_OID};
use crate::server::reply::{Column, Reply, ResultSet};
use crate::server::session::Session;
use crate::server::ServeView;

const GB: u64 = 1 << 30;

pub(super) fn run(s: &Session, view: &ServeView, name: &str) -> Reply {
    let lower = name.to_ascii_lowercase();
    let Some(value) = value_of(s, view, &lower) else {
        return Reply::Error(ErrorFields::error(
            codes::UNDEFINED_OBJECT,
            format!("unrecognized configuration parameter \"{name}\""),
        ));
    };
    ResultSet::new("SHOW", vec![Column::new(lower.as_str(), TEXT_OID)])
        .row([Some(value)])
        .into()
}

fn value_of(s: &Session, view: &ServeView, lower: &str) -> Option<String> {
    let up = |n: &str| {
        view.parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let or = |n: &str, default: &str| up(n).unwrap_or_else(|| default.into());
    Some(match lower {
        "wal_segment_size" => {
            if view.seg_size.checked_rem(GB) == Some(0) {
                format!("{}GB", view.seg_size >> 30)
            } else {
                format!("{}MB", view.seg_size >> 20)
            }
        }
        "data_directory_mode" => "0700".into(),
        "server_version" => view.server_version.clone(),
        "server_version_num" => crate::server::version_num(&view.server_version).to_string(),
        "wal_block_size" | "block_size" => "8192".into(),
        "max_identifier_length" => "63".into(),
        "integer_datetimes" => "on".into(),
        "application_name" => s.application_name.clone(),
        "session_authorization" => s.user.clone(),
        "is_superuser" => "on".into(),
        "transaction_read_only" => "off".into(),
        "server_encoding" => or("server_encoding", "UTF8"),
        "client_encoding" => or("client_encoding", "UTF8"),
        "timezone" => or("TimeZone", "UTC"),
        "datestyle" => or("DateStyle", "ISO, MDY"),
        "intervalstyle" => or("IntervalStyle", "postgres"),
        "standard_conforming_strings" => "on".into(),
        "default_transaction_read_only" => or("default_transaction_read_only", "off"),
        "in_hot_standby" => or("in_hot_standby", "off"),
        _ => return up(lower),
    })
}
