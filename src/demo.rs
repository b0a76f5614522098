//! `stockq demo`: placeholder, replaced below.
use clap::Args;
use crate::config::Settings;
use crate::error::Result;

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub async fn run(_settings: &Settings, _args: &DemoArgs) -> Result<u8> {
    Ok(0)
}
