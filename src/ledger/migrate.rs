//! The schema and the first contact: creating the database and applying `migrations/`,
//! reading `DATABASE_URL`, and turning a failed connect into what to do about it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{Connection, Executor};

use crate::config::Settings;
use crate::error::{Error, Result, bounded};

/// The database name of `DATABASE_URL`, validated so it can be quoted safely.
fn database_name(settings: &Settings) -> Result<String> {
    let url = url::Url::parse(settings.database_url.expose())
        .map_err(|e| Error::usage(format!("DATABASE_URL is not a valid URL: {e}")))?;
    let name = url.path().trim_start_matches('/').to_string();
    if name.is_empty() {
        return Err(Error::usage("DATABASE_URL names no database (add /stockq to its path)"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') || name.len() > 64 {
        return Err(Error::usage(format!(
            "database name {name:?} in DATABASE_URL: use letters, digits and _ only"
        )));
    }
    Ok(name)
}

pub(super) fn connect_options(settings: &Settings) -> Result<MySqlConnectOptions> {
    database_name(settings)?;
    MySqlConnectOptions::from_str(settings.database_url.expose())
        .map_err(|e| Error::usage(format!("DATABASE_URL {} is not usable: {e}", settings.database_url)))
}

/// Creates the database if missing and applies `migrations/`.
pub async fn migrate(settings: &Settings) -> Result<()> {
    crate::config::install_tls_provider();
    let name = database_name(settings)?;
    let mut server_url = url::Url::parse(settings.database_url.expose())
        .map_err(|e| Error::usage(format!("DATABASE_URL is not a valid URL: {e}")))?;
    server_url.set_path("/");
    let server = MySqlConnectOptions::from_str(server_url.as_str())
        .map_err(|e| Error::usage(format!("DATABASE_URL {} is not usable: {e}", settings.database_url)))?;
    bounded("mysql (connect)", Duration::from_secs(8), async {
        let mut conn = sqlx::MySqlConnection::connect_with(&server).await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"
        )))
        .await?;
        conn.close().await
    })
    .await
    .map_err(|e| describe_connect_error(e, settings))?;

    let options = connect_options(settings)?;
    let mut conn =
        bounded("mysql (connect)", Duration::from_secs(8), sqlx::MySqlConnection::connect_with(&options))
            .await
            .map_err(|e| describe_connect_error(e, settings))?;
    sqlx::migrate!("./migrations").run(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}

/// Turns a failed first contact into one line that says what to do.
pub(super) fn describe_connect_error(e: Error, settings: &Settings) -> Error {
    let message = crate::queue::one_line(&e.to_string());
    let hint = if message.contains("1146") || message.contains("doesn't exist") {
        "run `stockq migrate` first"
    } else if message.contains("1045") || message.contains("denied") {
        "check the user and password in DATABASE_URL (scripts/services.sh creates stockq/stockq)"
    } else if message.contains("1049") || message.contains("Unknown database") {
        "run `stockq migrate` to create it"
    } else {
        "start it (scripts/services.sh) or set DATABASE_URL"
    };
    match e {
        Error::Usage(_) => e,
        _ => Error::Refused(format!("cannot use MySQL at {} ({message}); {hint}", settings.database_url)),
    }
}
