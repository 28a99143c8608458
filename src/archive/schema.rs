//! The archive table (docs/archive.md, "Schema"): its name, the columns an insert writes, and
//! its definition on PostgreSQL and SQL Server (SQLite's is in `sqlite`).
//!
//! Invariants: every backend has the same columns with the same meaning, and a unique key on
//! (message_id, recipient_key), so inserting a row that is already there changes nothing;
//! each definition creates only what is missing, so running it again is harmless.

pub(crate) const TABLE: &str = "imcrypt_archive";

/// The insert columns, in order.
pub(crate) const COLUMNS: [&str; 13] = [
    "message_id",
    "recipient_key",
    "ts_ms",
    "direction",
    "encrypted",
    "from_idx",
    "to_idx",
    "room_idx",
    "from_addr",
    "to_addr",
    "room",
    "key_version",
    "payload",
];

pub(crate) const POSTGRES_SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS imcrypt_archive (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    VARCHAR(255) NOT NULL,
    recipient_key BYTEA        NOT NULL,
    ts_ms         BIGINT       NOT NULL,
    direction     VARCHAR(8)   NOT NULL,
    encrypted     BOOLEAN      NOT NULL,
    from_idx      BYTEA,
    to_idx        BYTEA,
    room_idx      BYTEA,
    from_addr     VARCHAR(320),
    to_addr       VARCHAR(320),
    room          VARCHAR(255),
    key_version   INTEGER,
    payload       BYTEA        NOT NULL,
    CONSTRAINT imcrypt_archive_row UNIQUE (message_id, recipient_key)
);
CREATE INDEX IF NOT EXISTS imcrypt_archive_from ON imcrypt_archive (from_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_to ON imcrypt_archive (to_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_room ON imcrypt_archive (room_idx);
CREATE INDEX IF NOT EXISTS imcrypt_archive_ts ON imcrypt_archive (ts_ms);
CREATE INDEX IF NOT EXISTS imcrypt_archive_from_clear ON imcrypt_archive (LOWER(from_addr))
    WHERE NOT encrypted;
CREATE INDEX IF NOT EXISTS imcrypt_archive_to_clear ON imcrypt_archive (LOWER(to_addr))
    WHERE NOT encrypted;
CREATE INDEX IF NOT EXISTS imcrypt_archive_room_clear ON imcrypt_archive (LOWER(room))
    WHERE NOT encrypted;
";

pub(crate) const SQLSERVER_SCHEMA: &str = "\
IF OBJECT_ID(N'dbo.imcrypt_archive', N'U') IS NULL
BEGIN
CREATE TABLE dbo.imcrypt_archive (
    id            BIGINT IDENTITY(1,1) PRIMARY KEY,
    message_id    NVARCHAR(255)  NOT NULL,
    recipient_key VARBINARY(32)  NOT NULL,
    ts_ms         BIGINT         NOT NULL,
    direction     VARCHAR(8)     NOT NULL,
    encrypted     BIT            NOT NULL,
    from_idx      VARBINARY(32)  NULL,
    to_idx        VARBINARY(32)  NULL,
    room_idx      VARBINARY(32)  NULL,
    from_addr     NVARCHAR(320)  NULL,
    to_addr       NVARCHAR(320)  NULL,
    room          NVARCHAR(255)  NULL,
    key_version   INT            NULL,
    payload       VARBINARY(MAX) NOT NULL
);
CREATE UNIQUE INDEX imcrypt_archive_row ON dbo.imcrypt_archive (message_id, recipient_key)
    WITH (IGNORE_DUP_KEY = ON);
CREATE INDEX imcrypt_archive_from ON dbo.imcrypt_archive (from_idx);
CREATE INDEX imcrypt_archive_to ON dbo.imcrypt_archive (to_idx);
CREATE INDEX imcrypt_archive_room ON dbo.imcrypt_archive (room_idx);
CREATE INDEX imcrypt_archive_ts ON dbo.imcrypt_archive (ts_ms);
END
";
