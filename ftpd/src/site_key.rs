//! `SITE KEY`: the KEY command as a libunftp SITE extension (the front turns bare `KEY` lines
//! into this). Replies follow the protocol: `230` for a declaration, exactly `230 0x...` for a
//! query, a `213` multi-line reply for INFO, `501` for bad arguments.

use crate::backend::KeyStorage;
use crate::ftp_error::{key_error, key_syntax_error};
use crate::key_session::{KeyError, KeyOutcome};
use crate::users::FtpUser;
use async_trait::async_trait;
use crc_tools::KeyCommand;
use libunftp::options::{Reply, ReplyCode, SiteCommandContext, SiteCommandHandler};

/// The `SITE KEY` handler.
#[derive(Debug, Default)]
pub struct SiteKey;

/// Formats what the KEY session answered as the FTP reply (errors: [`key_error`]).
pub fn reply(result: Result<KeyOutcome, KeyError>) -> Reply {
    match result {
        Ok(KeyOutcome::Declared { crc, path: None }) => Reply::new_with_string(
            ReplyCode::UserLoggedIn,
            format!("KEY {crc} accepted for the next upload"),
        ),
        Ok(KeyOutcome::Declared { crc, path: Some(p) }) => Reply::new_with_string(
            ReplyCode::UserLoggedIn,
            format!("KEY {crc} accepted for {p}"),
        ),
        Ok(KeyOutcome::Answer(a)) => Reply::new_with_string(ReplyCode::UserLoggedIn, a.to_string()),
        Ok(KeyOutcome::Info { path, lines }) => {
            let mut all = Vec::with_capacity(lines.len() + 2);
            all.push(format!("KEY INFO {path}"));
            all.extend(lines);
            all.push("End".to_string());
            Reply::new_multiline(ReplyCode::FileStatus, all)
        }
        Err(e) => key_error(e),
    }
}

#[async_trait]
impl SiteCommandHandler<KeyStorage, FtpUser> for SiteKey {
    async fn handle(&self, ctx: &SiteCommandContext<KeyStorage, FtpUser>) -> Reply {
        let Some(user) = ctx.user.as_ref().as_ref() else {
            return reply(Err(KeyError::NotLoggedIn));
        };
        match KeyCommand::parse(&ctx.arguments) {
            Err(e) => key_syntax_error(e),
            Ok(cmd) => reply(ctx.storage.key_command(user, cmd).await),
        }
    }
}
