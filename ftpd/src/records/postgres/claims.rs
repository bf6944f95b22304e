//! Claims in SQL: one writer per file across the nodes. A claim is a row of `ftpd_claims`
//! with its holder, a fence from the `ftpd_fence` sequence (it only grows, even after a
//! release) and an expiry that only the database's clock judges.

use super::db::Db;
use super::listen;
use crate::records::store::{Claim, Lease, StoreError};
use deadpool_postgres::Transaction;
use std::time::Duration;

/// Longest claim that can be asked for: keeps the interval arithmetic in range.
const TTL_MAX: Duration = Duration::from_secs(86_400);

/// Takes the file if nobody holds it or its claim ran out (the database's clock decides).
const CLAIM: &str = "INSERT INTO ftpd_claims AS c (username, path, holder, fence, expires_at) \
     VALUES ($1, $2, $3, nextval('ftpd_fence'), clock_timestamp() + $4::int8 * interval '1 millisecond') \
     ON CONFLICT (username, path) DO UPDATE \
     SET holder = EXCLUDED.holder, fence = EXCLUDED.fence, expires_at = EXCLUDED.expires_at \
     WHERE c.expires_at < clock_timestamp() RETURNING fence";
const HOLDER: &str = "SELECT holder, \
     GREATEST(0, floor(extract(epoch FROM (expires_at - clock_timestamp())) * 1000))::int8 \
     FROM ftpd_claims WHERE username = $1 AND path = $2";
const RENEW: &str = "UPDATE ftpd_claims \
     SET expires_at = clock_timestamp() + $5::int8 * interval '1 millisecond' \
     WHERE username = $1 AND path = $2 AND holder = $3 AND fence = $4";
const RELEASE: &str =
    "DELETE FROM ftpd_claims WHERE username = $1 AND path = $2 AND holder = $3 AND fence = $4";
/// Holds the claim row until commit, so no other node can take the file meanwhile.
const HOLDS: &str = "SELECT 1 FROM ftpd_claims \
     WHERE username = $1 AND path = $2 AND holder = $3 AND fence = $4 FOR SHARE";

/// A claim duration in milliseconds, clamped to [`TTL_MAX`].
fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.min(TTL_MAX).as_millis()).unwrap_or(i64::MAX)
}

impl Db {
    pub(super) async fn claim(
        &self,
        user: &str,
        path: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let client = self.client().await?;
        let claim = client.prepare_cached(CLAIM).await?;
        let holder = client.prepare_cached(HOLDER).await?;
        let ttl = ttl_ms(ttl);
        // A claim released or run out between the two statements is simply tried again.
        for _ in 0..3 {
            if let Some(row) = client
                .query_opt(&claim, &[&user, &path, &node, &ttl])
                .await?
            {
                let fence: i64 = row.try_get(0)?;
                return Ok(Claim::Acquired(Lease {
                    node: node.to_owned(),
                    fence: u64::try_from(fence)
                        .map_err(|_| StoreError::Shared(format!("fence {fence}")))?,
                }));
            }
            if let Some(row) = client.query_opt(&holder, &[&user, &path]).await? {
                let (node, ms): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
                if ms > 0 {
                    return Ok(Claim::Held {
                        node,
                        expires_in: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                    });
                }
            }
        }
        Err(StoreError::Shared(format!(
            "the claim on {user} {path} keeps changing hands"
        )))
    }

    pub(super) async fn renew(
        &self,
        user: &str,
        path: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let Ok(fence) = i64::try_from(lease.fence) else {
            return Ok(false);
        };
        let client = self.client().await?;
        let stmt = client.prepare_cached(RENEW).await?;
        let n = client
            .execute(&stmt, &[&user, &path, &lease.node, &fence, &ttl_ms(ttl)])
            .await?;
        Ok(n == 1)
    }

    pub(super) async fn release(
        &self,
        user: &str,
        path: &str,
        lease: &Lease,
    ) -> Result<(), StoreError> {
        let Ok(fence) = i64::try_from(lease.fence) else {
            return Ok(());
        };
        let client = self.client().await?;
        let stmt = client.prepare_cached(RELEASE).await?;
        client
            .execute(&stmt, &[&user, &path, &lease.node, &fence])
            .await?;
        Ok(())
    }

    /// Sends a takeover request to every node's LISTEN connection.
    pub(super) async fn request_takeover(&self, user: &str, path: &str) -> Result<(), StoreError> {
        let payload = serde_json::to_string(&listen::TakeoverRequest {
            user: user.to_owned(),
            path: path.to_owned(),
        })
        .map_err(|e| StoreError::Shared(format!("takeover request: {e}")))?;
        let client = self.client().await?;
        let sql = format!("SELECT pg_notify('{}', $1)", listen::TAKEOVER_CHANNEL);
        let stmt = client.prepare_cached(&sql).await?;
        client.query(&stmt, &[&payload]).await?;
        Ok(())
    }
}

/// Fails with [`StoreError::Fenced`] unless `lease` is the file's current claim; holds the
/// claim row until `txn` ends.
pub(super) async fn holds(
    txn: &Transaction<'_>,
    user: &str,
    path: &str,
    lease: &Lease,
) -> Result<(), StoreError> {
    let fenced = StoreError::Fenced { fence: lease.fence };
    let Ok(fence) = i64::try_from(lease.fence) else {
        return Err(fenced);
    };
    let stmt = txn.prepare_cached(HOLDS).await?;
    match txn
        .query_opt(&stmt, &[&user, &path, &lease.node, &fence])
        .await?
    {
        Some(_) => Ok(()),
        None => Err(fenced),
    }
}
