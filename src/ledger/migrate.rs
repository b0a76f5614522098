//! The schema and the first contact: creating the database and applying `migrations/`,
//! reading `DATABASE_URL`, and turning a failed connect into what to do about it.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError};
use sqlx::{ConnectOptions, Connection, Executor};

use crate::config::Settings;
use crate::error::{Error, Result, Store, bounded};

/// `DATABASE_URL`, read once: the database it names, and the options to reach the server
/// with that database and without one.
pub(super) struct DatabaseUrl {
    /// Validated so that it can be quoted safely in `CREATE DATABASE`.
    pub(super) name: String,
    pub(super) database: MySqlConnectOptions,
    /// `migrate` creates the database, so its first connection must not name it: the server
    /// would refuse it (1049) while it does not exist yet.
    pub(super) server: MySqlConnectOptions,
}

impl DatabaseUrl {
    pub(super) fn parse(settings: &Settings) -> Result<DatabaseUrl> {
        let mut url = url::Url::parse(settings.mysql.url.expose())
            .map_err(|e| Error::usage(format!("DATABASE_URL is not a valid URL: {e}")))?;
        let name = database_name(&url)?;
        url.set_path("/");
        let server = MySqlConnectOptions::from_url(&url)
            .map_err(|e| Error::usage(format!("DATABASE_URL {} is not usable: {e}", settings.mysql.url)))?;
        let database = server.clone().database(&name);
        Ok(DatabaseUrl { name, database, server })
    }
}

fn database_name(url: &url::Url) -> Result<String> {
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

/// Creates the database if missing and applies `migrations/`.
pub async fn migrate(settings: &Settings) -> Result<()> {
    let DatabaseUrl { name, database, server } = DatabaseUrl::parse(settings)?;
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

    let mut conn =
        bounded("mysql (connect)", Duration::from_secs(8), sqlx::MySqlConnection::connect_with(&database))
            .await
            .map_err(|e| describe_connect_error(e, settings))?;
    sqlx::migrate!("./migrations").run(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}

/// Turns a failed first contact into an error that says what to do.
pub(super) fn describe_connect_error(e: Error, settings: &Settings) -> Error {
    let hint = connect_hint(mysql_error_number(&e));
    match e {
        Error::Usage(_) => e,
        source => Error::Connect {
            store: Store::Mysql,
            target: settings.mysql.url.to_string(),
            hint,
            source: Box::new(source),
        },
    }
}

fn connect_hint(number: Option<u16>) -> &'static str {
    match number {
        Some(1146) => "run `stockq migrate` first", // no such table
        // a wrong password (1045, or 1698 for an account that only takes the unix socket), or
        // an account without the grants on the database (1044) or its tables (1142)
        Some(1044 | 1045 | 1142 | 1698) => {
            "check the user and password in DATABASE_URL (scripts/services.sh creates stockq/stockq)"
        }
        Some(1049) => "run `stockq migrate` to create it", // unknown database
        _ => "start it (scripts/services.sh) or set DATABASE_URL",
    }
}

/// The MySQL error number, when the server answered with an error (`code()` would be the
/// SQLSTATE, shared by many numbers).
fn mysql_error_number(e: &Error) -> Option<u16> {
    match e {
        Error::Database(sqlx::Error::Database(db)) => {
            db.try_downcast_ref::<MySqlDatabaseError>().map(MySqlDatabaseError::number)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<DatabaseUrl> {
        DatabaseUrl::parse(&Settings::new("redis://127.0.0.1", url, "q").unwrap())
    }

    #[test]
    fn one_parse_gives_the_name_and_both_ways_in() {
        let url = parse("mysql://app:pw@db.example:3307/shop_1?ssl-mode=disabled").unwrap();
        assert_eq!(url.name, "shop_1");
        assert_eq!(url.database.get_database(), Some("shop_1"));
        assert_eq!(url.server.get_database(), None);
        for options in [&url.database, &url.server] {
            assert_eq!((options.get_host(), options.get_port()), ("db.example", 3307));
            assert_eq!(options.get_username(), "app");
        }
    }

    #[test]
    fn a_name_that_could_not_be_quoted_safely_is_refused() {
        let message = |url: &str| parse(url).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message("mysql://app:pw@db/").contains("names no database"));
        assert!(message("mysql://app:pw@db/a%60b").contains("use letters, digits and _ only"));
    }
}
