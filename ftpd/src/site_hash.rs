//! `SITE HASH` from the unftp-site-hash crate. That crate is built against libunftp 0.23,
//! whose handler trait is a different type from 0.24's; both share unftp-core's storage and
//! user traits, so this bridge only converts the context in and the reply out.

use crate::storage::KeyStorage;
use crate::users::FtpUser;
use async_trait::async_trait;
use libunftp::options::{Reply, ReplyCode, SiteCommandContext, SiteCommandHandler};
use libunftp_023::options as v023;
use unftp_site_hash::HashCommandHandler;

/// `SITE HASH [-a SHA-256|SHA-1|MD5|CRC32] <path>...`
#[derive(Debug, Default)]
pub struct SiteHash(HashCommandHandler);

fn code(c: v023::ReplyCode) -> ReplyCode {
    match c as u32 {
        213 => ReplyCode::FileStatus,
        501 => ReplyCode::ParameterSyntaxError,
        530 => ReplyCode::NotLoggedIn,
        550 => ReplyCode::FileError,
        200 => ReplyCode::CommandOkay,
        _ => ReplyCode::LocalError,
    }
}

#[async_trait]
impl SiteCommandHandler<KeyStorage, FtpUser> for SiteHash {
    async fn handle(&self, ctx: &SiteCommandContext<KeyStorage, FtpUser>) -> Reply {
        let old = v023::SiteCommandContext {
            command: ctx.command.clone(),
            arguments: ctx.arguments.clone(),
            username: ctx.username.clone(),
            storage: ctx.storage.clone(),
            user: ctx.user.clone(),
            logger: ctx.logger.clone(),
        };
        match v023::SiteCommandHandler::handle(&self.0, &old).await {
            v023::Reply::None => Reply::None,
            v023::Reply::CodeAndMsg { code: c, msg } => Reply::new_with_string(code(c), msg),
            v023::Reply::MultiLine { code: c, lines } => Reply::new_multiline(code(c), lines),
        }
    }
}
