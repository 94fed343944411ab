//! Management commands (`spec/turku.md` §1.10) and the operator conveniences that the
//! original left to the Django admin. Each returns the text to print; the binary prints it.

use chrono::{DateTime, Duration, Utc};
use turku_api_types::constants::{defaults, secret_type};

use crate::db::{self, Db};
use crate::health;
use crate::models::{self, hyphenated, Auth, Machine};
use crate::secrets::{self, HashParams};

/// Failures of a management command.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Database failure.
    #[error(transparent)]
    Db(#[from] crate::error::DbError),
    /// Nothing matches the given identifier.
    #[error("{0} not found")]
    NotFound(String),
    /// Several machines share the given unit name.
    #[error("{0} is ambiguous ({1} matches); use the machine UUID")]
    Ambiguous(String, usize),
    /// The name is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// Invalid argument.
    #[error("{0}")]
    Invalid(String),
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] secrets::HashError),
}

impl From<rusqlite::Error> for AdminError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Db(e.into())
    }
}

/// Registration secret kinds accepted by `auth-create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// `machine_reg`.
    MachineReg,
    /// `storage_reg`.
    StorageReg,
}

impl AuthKind {
    fn wire(self) -> &'static str {
        match self {
            Self::MachineReg => secret_type::MACHINE_REG,
            Self::StorageReg => secret_type::STORAGE_REG,
        }
    }
}

/// `auth-create`: a new active Auth with a random 30-character secret. Prints
/// `New registration secret created: <secret> (<name>)`, or only the secret with `raw`.
pub fn auth_create(
    db: &Db,
    kind: AuthKind,
    name: Option<&str>,
    raw: bool,
    params: HashParams,
    now: DateTime<Utc>,
) -> Result<String, AdminError> {
    let name = name.map_or_else(
        || match kind {
            AuthKind::MachineReg => defaults::MACHINE_AUTH_NAME.to_owned(),
            AuthKind::StorageReg => defaults::STORAGE_AUTH_NAME.to_owned(),
        },
        str::to_owned,
    );
    if db::auth_name_exists(&db.conn(), &name)? {
        return Err(AdminError::Exists(format!("Auth {name:?}")));
    }
    let secret = secrets::random_secret();
    let auth = Auth {
        id: models::new_id(),
        name: name.clone(),
        secret_hash: secrets::hash(&secret, params)?,
        secret_type: kind.wire().to_owned(),
        comment: None,
        active: true,
        date_added: now,
    };
    db::insert_auth(&db.conn(), &auth)?;
    Ok(if raw {
        format!("{secret}\n")
    } else {
        format!("New registration secret created: {secret} ({name})\n")
    })
}

/// `health`: the Nagios report and its exit code.
pub fn health(db: &Db, now: DateTime<Utc>) -> Result<health::Report, AdminError> {
    Ok(health::report(&db.conn(), now)?)
}

/// `clean-logs --days N`: delete logs that ended more than N days ago. Returns the count.
pub fn clean_logs(db: &Db, days: u32, now: DateTime<Utc>) -> Result<usize, AdminError> {
    Ok(db::delete_logs_before(
        &db.conn(),
        now - Duration::days(i64::from(days)),
    )?)
}

/// Find a machine by UUID (any accepted spelling) or by unit name.
pub fn find_machine(db: &Db, ident: &str) -> Result<Machine, AdminError> {
    let conn = db.conn();
    if let Ok(u) = uuid::Uuid::try_parse(ident) {
        if let Some(m) = db::machine_by_uuid(&conn, &u.simple().to_string())? {
            return Ok(m);
        }
    }
    let mut found = db::machines_by_unit_name(&conn, ident)?;
    match found.len() {
        0 => Err(AdminError::NotFound(format!("machine {ident:?}"))),
        1 => Ok(found.remove(0)),
        n => Err(AdminError::Ambiguous(format!("machine {ident:?}"), n)),
    }
}

/// `backup-now MACHINE SOURCE`: make the source due now (the Django admin way of forcing a
/// backup: its next agent check-in picks it up).
pub fn backup_now(
    db: &Db,
    machine: &str,
    source: &str,
    now: DateTime<Utc>,
) -> Result<String, AdminError> {
    let m = find_machine(db, machine)?;
    let conn = db.conn();
    let s = db::sources_of_machine(&conn, &m.id)?
        .into_iter()
        .find(|s| s.name == source)
        .ok_or_else(|| AdminError::NotFound(format!("source {source:?} of {}", m.label())))?;
    db::set_next_backup(&conn, &s.id, now)?;
    let mut note = String::new();
    if !(s.active && s.published && m.active && m.published) {
        note =
            " (note: machine or source is inactive or unpublished, so it will not run)".to_owned();
    }
    Ok(format!("{} {} is due now{note}\n", m.label(), s.name))
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// `list machines`.
pub fn list_machines(db: &Db, now: DateTime<Utc>) -> Result<String, AdminError> {
    let conn = db.conn();
    let storages = db::all_storages(&conn)?;
    let mut out = String::from("UUID\tUNIT\tSTORAGE\tCHECKED_IN\tACTIVE\tPUBLISHED\tHEALTHY\n");
    for m in db::all_machines(&conn)? {
        let storage = storages
            .iter()
            .find(|s| s.id == m.storage_id)
            .map_or("-", |s| s.name.as_str());
        out.push_str(&format!(
            "{}\t{}\t{storage}\t{}\t{}\t{}\t{}\n",
            hyphenated(&m.uuid),
            m.unit_name.as_deref().unwrap_or(""),
            when(m.date_checked_in),
            yes_no(m.active),
            yes_no(m.published),
            yes_no(health::machine_healthy(&m, now)),
        ));
    }
    Ok(out)
}

/// `list sources`.
pub fn list_sources(db: &Db, now: DateTime<Utc>) -> Result<String, AdminError> {
    let conn = db.conn();
    let mut out =
        String::from("MACHINE\tSOURCE\tPATH\tFREQUENCY\tLAST\tNEXT\tACTIVE\tPUBLISHED\tHEALTHY\n");
    for m in db::all_machines(&conn)? {
        for s in db::sources_of_machine(&conn, &m.id)? {
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                m.label(),
                s.name,
                s.path.as_deref().unwrap_or(""),
                s.frequency,
                when(s.date_last_backed_up),
                when(Some(s.date_next_backup)),
                yes_no(s.active),
                yes_no(s.published),
                yes_no(health::source_healthy(&s, now)),
            ));
        }
    }
    Ok(out)
}

/// `list storages`.
pub fn list_storages(db: &Db, now: DateTime<Utc>) -> Result<String, AdminError> {
    let conn = db.conn();
    let mut out = String::from("NAME\tHOST\tPORT\tUSER\tAVAILABLE_MIB\tTOTAL_MIB\tCHECKED_IN\tACTIVE\tPUBLISHED\tHEALTHY\n");
    for s in db::all_storages(&conn)? {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            s.name,
            s.ssh_ping_host.as_deref().unwrap_or(""),
            s.ssh_ping_port.unwrap_or_default(),
            s.ssh_ping_user.as_deref().unwrap_or(""),
            s.space_available,
            s.space_total,
            when(s.date_checked_in),
            yes_no(s.active),
            yes_no(s.published),
            yes_no(health::storage_healthy(&s, now)),
        ));
    }
    Ok(out)
}

/// `activate`/`deactivate machine MACHINE`.
pub fn set_machine_active(db: &Db, ident: &str, active: bool) -> Result<String, AdminError> {
    let m = find_machine(db, ident)?;
    db::set_machine_active(&db.conn(), &m.id, active)?;
    Ok(format!(
        "{} {}\n",
        m.label(),
        if active { "activated" } else { "deactivated" }
    ))
}

/// `activate`/`deactivate storage NAME`.
pub fn set_storage_active(db: &Db, name: &str, active: bool) -> Result<String, AdminError> {
    let conn = db.conn();
    let s = db::storage_by_name(&conn, name)?
        .ok_or_else(|| AdminError::NotFound(format!("storage {name:?}")))?;
    db::set_storage_active(&conn, &s.id, active)?;
    Ok(format!(
        "{} {}\n",
        s.name,
        if active { "activated" } else { "deactivated" }
    ))
}

/// `move MACHINE STORAGE`: reassign a machine. The new storage picks it up at its next
/// `storage_update_config`; existing snapshots stay on the old one.
pub fn move_machine(db: &Db, ident: &str, storage: &str) -> Result<String, AdminError> {
    let m = find_machine(db, ident)?;
    let conn = db.conn();
    let s = db::storage_by_name(&conn, storage)?
        .ok_or_else(|| AdminError::NotFound(format!("storage {storage:?}")))?;
    if s.id == m.storage_id {
        return Err(AdminError::Invalid(format!(
            "{} is already on {}",
            m.label(),
            s.name
        )));
    }
    db::set_machine_storage(&conn, &m.id, &s.id)?;
    Ok(format!("{} moved to {}\n", m.label(), s.name))
}

/// `set-filterset NAME [RULE]...`: create or replace a FilterSet (what sources' `merge NAME`
/// rules expand to). Rules are stored as the original stores them (a JSON string list).
pub fn set_filterset(
    db: &Db,
    name: &str,
    rules: &[String],
    active: bool,
    now: DateTime<Utc>,
) -> Result<String, AdminError> {
    if name.is_empty() || name.chars().count() > crate::constants::limits::CHAR {
        return Err(AdminError::Invalid(format!(
            "invalid FilterSet name {name:?}"
        )));
    }
    let json = turku_api_types::pyjson::string_list(rules);
    db::put_filterset(&db.conn(), name, &json, active, now)?;
    Ok(format!(
        "FilterSet {name} ({} rules{})\n",
        rules.len(),
        if active { "" } else { ", inactive" }
    ))
}
