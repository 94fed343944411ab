-- Schema 1: the six Turku models (spec/turku.md §1.2).
--
-- Table and column names follow Django's defaults for the original app (`turku_api_<model>`,
-- `<fk>_id`), and values use Django's SQLite encodings (UUIDs as 32 lowercase hex digits,
-- datetimes as UTC text `YYYY-MM-DD HH:MM:SS.ffffff`, booleans as 0/1), so that a database
-- of the original can be imported with plain SQL.

CREATE TABLE turku_api_auth (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    secret_type TEXT NOT NULL CHECK (secret_type IN ('machine_reg', 'storage_reg')),
    comment TEXT,
    active INTEGER NOT NULL DEFAULT 1,
    date_added TEXT NOT NULL
);

CREATE TABLE turku_api_storage (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    comment TEXT,
    ssh_ping_host TEXT NOT NULL,
    ssh_ping_host_keys TEXT NOT NULL DEFAULT '[]',
    ssh_ping_port INTEGER NOT NULL,
    ssh_ping_user TEXT NOT NULL,
    space_total INTEGER NOT NULL DEFAULT 0,
    space_available INTEGER NOT NULL DEFAULT 0,
    auth_id TEXT NOT NULL REFERENCES turku_api_auth (id) ON DELETE CASCADE,
    active INTEGER NOT NULL DEFAULT 1,
    published INTEGER NOT NULL DEFAULT 1,
    date_registered TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    date_checked_in TEXT
);

CREATE TABLE turku_api_machine (
    id TEXT PRIMARY KEY NOT NULL,
    uuid TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    environment_name TEXT,
    service_name TEXT,
    unit_name TEXT NOT NULL,
    comment TEXT,
    ssh_public_key TEXT NOT NULL,
    auth_id TEXT NOT NULL REFERENCES turku_api_auth (id) ON DELETE CASCADE,
    storage_id TEXT NOT NULL REFERENCES turku_api_storage (id) ON DELETE CASCADE,
    active INTEGER NOT NULL DEFAULT 1,
    published INTEGER NOT NULL DEFAULT 1,
    date_registered TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    date_checked_in TEXT
);
CREATE INDEX turku_api_machine_storage_id ON turku_api_machine (storage_id);
CREATE INDEX turku_api_machine_unit_name ON turku_api_machine (unit_name);

CREATE TABLE turku_api_source (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    machine_id TEXT NOT NULL REFERENCES turku_api_machine (id) ON DELETE CASCADE,
    comment TEXT,
    path TEXT NOT NULL,
    filter TEXT NOT NULL DEFAULT '[]',
    exclude TEXT NOT NULL DEFAULT '[]',
    frequency TEXT NOT NULL DEFAULT 'daily',
    retention TEXT NOT NULL DEFAULT 'last 5 days, earliest of month',
    bwlimit TEXT,
    snapshot_mode TEXT,
    preserve_hard_links INTEGER NOT NULL DEFAULT 0,
    shared_service INTEGER NOT NULL DEFAULT 0,
    large_rotating_files INTEGER NOT NULL DEFAULT 0,
    large_modifying_files INTEGER NOT NULL DEFAULT 0,
    active INTEGER NOT NULL DEFAULT 1,
    success INTEGER NOT NULL DEFAULT 1,
    published INTEGER NOT NULL DEFAULT 1,
    date_added TEXT NOT NULL,
    date_updated TEXT NOT NULL,
    date_last_backed_up TEXT,
    date_next_backup TEXT NOT NULL,
    UNIQUE (machine_id, name)
);
-- Check-ins select a machine's due sources: (machine_id, date_next_backup) serves both the
-- per-machine listing and the "due now" range.
CREATE INDEX turku_api_source_machine_next ON turku_api_source (machine_id, date_next_backup);

CREATE TABLE turku_api_backuplog (
    id TEXT PRIMARY KEY NOT NULL,
    source_id TEXT NOT NULL REFERENCES turku_api_source (id) ON DELETE CASCADE,
    date TEXT NOT NULL,
    storage_id TEXT REFERENCES turku_api_storage (id) ON DELETE CASCADE,
    success INTEGER NOT NULL DEFAULT 0,
    date_begin TEXT,
    date_end TEXT,
    snapshot TEXT,
    summary TEXT
);
CREATE INDEX turku_api_backuplog_source_id ON turku_api_backuplog (source_id);
CREATE INDEX turku_api_backuplog_date_end ON turku_api_backuplog (date_end);

CREATE TABLE turku_api_filterset (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    filters TEXT NOT NULL DEFAULT '[]',
    comment TEXT,
    active INTEGER NOT NULL DEFAULT 1,
    date_added TEXT NOT NULL
);
